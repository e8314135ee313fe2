"""Vercel-specific behaviour through the orchestrator: faults injected in the emulator of Vercel's API reach the
client as the documented status codes, and no test leaves a sandbox behind in the emulator."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests import endpoints
from tests.client import Client, expect_error
from tests.emulators.vercel.harness import VercelHarness
from tests.emulators.vercel.server import DOMAIN, Emulator
from tests.harness import HARNESSES, ProviderHarness

pytestmark = pytest.mark.skipif("vercel" not in HARNESSES, reason="the Vercel harness is not available")


@pytest.fixture(scope="module")
def vercel(harnesses: Callable[[str], ProviderHarness]) -> VercelHarness:
    harness = harnesses("vercel")
    assert isinstance(harness, VercelHarness)
    return harness


@pytest.fixture(autouse=True)
def emulator(vercel: VercelHarness) -> Iterator[Emulator]:
    """Every test starts without faults and must leave no sandbox in the emulator."""
    vercel.emulator.clear_faults()
    vercel.emulator.destroy_all()  # what an earlier (shared) test left is not this test's leak
    yield vercel.emulator
    vercel.emulator.clear_faults()
    leftovers = vercel.emulator.live_sandboxes()
    vercel.emulator.destroy_all()
    assert leftovers == [], f"test leaked sandboxes in the emulator: {leftovers}"


@pytest.fixture(scope="module")
def fault_stack(vercel: VercelHarness, make_stack: Callable[..., LocalStack]) -> LocalStack:
    # A short request timeout makes slow responses fail fast.
    return make_stack(vercel, SANDBOX_VERCEL_REQUEST_TIMEOUT_SECONDS="2")


@pytest.fixture
async def rpc(vercel: VercelHarness, fault_stack: LocalStack) -> AsyncIterator[Client]:
    c = vercel.client(fault_stack.address, fault_stack.client_token)
    yield c
    await c.close()


async def test_server_errors_on_create_are_unavailable(rpc: Client, emulator: Emulator) -> None:
    emulator.inject(method="POST", path="^/v3/sandboxes$", status=503)
    await expect_error(rpc.create(), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")  # and no traceback


async def test_rate_limit_is_resource_exhausted(rpc: Client, emulator: Emulator) -> None:
    emulator.inject(method="POST", path="^/v3/sandboxes$", status=429)
    await expect_error(rpc.create(), grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")


async def test_transient_errors_on_reads_are_retried(rpc: Client, emulator: Emulator) -> None:
    created = await rpc.create()
    try:
        emulator.inject(method="GET", path="^/v2/sandboxes/sbx-", status=502, times=2)
        fetched = await rpc.get(created.name)
        assert fetched.name == created.name
    finally:
        await rpc.delete(created.name)


async def test_slow_responses_past_the_timeout_are_unavailable(rpc: Client, emulator: Emulator) -> None:
    created = await rpc.create()
    try:
        # Slower than the 2 s request timeout on every attempt; a read is retried, then given up.
        emulator.inject(method="GET", path="^/v2/sandboxes/sbx-", delay=3.0, times=3)
        await expect_error(rpc.get(created.name), grpc.StatusCode.UNAVAILABLE)
        # Slow but within the timeout is fine.
        emulator.clear_faults()
        emulator.inject(method="GET", path="^/v2/sandboxes/sbx-", delay=0.5)
        assert (await rpc.get(created.name)).state == pb.Sandbox.STATE_RUNNING
    finally:
        await rpc.delete(created.name)


async def test_vanished_sandbox_is_not_found(rpc: Client, emulator: Emulator) -> None:
    created = await rpc.create()
    emulator.vanish(created.name.rsplit("/", 1)[1])
    await expect_error(rpc.get(created.name), grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND")
    await expect_error(rpc.run(created.name, ["true"]), grpc.StatusCode.NOT_FOUND)
    await rpc.delete(created.name)  # already gone: deleting succeeds


async def test_sandbox_vanishing_mid_stream_is_reported(rpc: Client, emulator: Emulator) -> None:
    created = await rpc.create()
    stream = rpc.run_stream(created.name, ["sh", "-c", "echo started; sleep 60"])
    async for event in stream:
        if event.WhichOneof("event") == "output":
            break
    emulator.vanish(created.name.rsplit("/", 1)[1])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stream:
            pass
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
    await rpc.delete(created.name)


async def test_dropped_log_stream_is_resumed_without_loss(rpc: Client, emulator: Emulator) -> None:
    created = await rpc.create()
    try:
        # The first log connection breaks after 3000 bytes; the SDK reconnects and skips what it delivered.
        emulator.inject(method="GET", path="/cmd/[^/]+/logs$", drop_after_bytes=3000)
        script = "for i in $(seq 1 2000); do echo line $i; done; echo bye >&2"
        result = await rpc.run(created.name, ["sh", "-c", script])
        assert bytes(result.stdout) == b"".join(b"line %d\n" % i for i in range(1, 2001))
        assert bytes(result.stderr) == b"bye\n"
        assert result.finished is not None and result.finished.state == pb.Execution.STATE_SUCCEEDED
        assert any(f.hits for f in emulator.faults)
    finally:
        await rpc.delete(created.name)


async def test_rejected_api_key_is_failed_precondition(
    vercel: VercelHarness, make_stack: Callable[..., LocalStack]
) -> None:
    stack = make_stack(vercel, VERCEL_TOKEN="not-the-right-token")
    c = vercel.client(stack.address, stack.client_token)
    try:
        for call in (c.create(), c.get("providers/vercel/sandboxes/sbx-any")):
            # Never UNAUTHENTICATED: that code is about the client's own credential.
            await expect_error(call, grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    finally:
        await c.close()


async def test_unreachable_api_is_unavailable(vercel: VercelHarness, make_stack: Callable[..., LocalStack]) -> None:
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = make_stack(vercel, SANDBOX_VERCEL_API_URL=f"http://127.0.0.1:{port}/")
    c = vercel.client(stack.address, stack.client_token)
    try:
        await expect_error(c.create(), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    finally:
        await c.close()


async def test_tags_hold_the_record_within_vercels_limit(rpc: Client, emulator: Emulator) -> None:
    labels = {f"k{i}": f"value-{i}" for i in range(10)}
    created = await rpc.create(labels=labels, request_id="tags-1")
    try:
        sandbox = emulator.sandboxes[created.name.rsplit("/", 1)[1]]
        assert len(sandbox.tags) <= 5
        assert (await rpc.get(created.name)).labels == labels
        # The session was created to last as long as the sandbox may (the TTL), as Vercel's timeout.
        assert sandbox.timeout_ms == 3600 * 1000
        assert not sandbox.env and "SECRET" not in str(sandbox.tags)
    finally:
        await rpc.delete(created.name)


async def test_spec_env_reaches_commands_and_not_tags(rpc: Client, emulator: Emulator) -> None:
    created = await rpc.create(spec=pb.SandboxSpec(env={"SECRET_VALUE": "s3cr3t"}))
    try:
        result = await rpc.run(created.name, ["sh", "-c", 'printf %s "$SECRET_VALUE"'])
        assert bytes(result.stdout) == b"s3cr3t"
        assert "s3cr3t" not in str(emulator.sandboxes[created.name.rsplit("/", 1)[1]].tags)
    finally:
        await rpc.delete(created.name)


async def test_unsupported_spec_fields_are_invalid(rpc: Client) -> None:
    for spec in (
        pb.SandboxSpec(pids_limit=10),
        pb.SandboxSpec(network_mode="bridge"),
        pb.SandboxSpec(milli_cpus=64000),
    ):
        await expect_error(rpc.create(spec=spec), grpc.StatusCode.INVALID_ARGUMENT)


async def test_consumer_stopping_early_ends_the_follower_not_the_command(rpc: Client) -> None:
    created = await rpc.create()
    try:
        stream = rpc.run_stream(created.name, ["sh", "-c", "echo started; sleep 300"])
        name = ""
        async for event in stream:
            name = name or event.started.name
            if event.WhichOneof("event") == "output":
                break
        stream.cancel()
        count = "ps -eo args | grep -c '^tail ---disable-inotify' || true"
        for _ in range(50):
            followers = await rpc.run(created.name, ["sh", "-c", count])
            if bytes(followers.stdout).strip() == b"0":
                break
            await asyncio.sleep(0.1)
        assert bytes(followers.stdout).strip() == b"0"
        execution = await rpc.stub.GetExecution(pb.GetExecutionRequest(name=name), metadata=rpc.metadata)
        assert execution.state == pb.Execution.STATE_RUNNING
    finally:
        await rpc.delete(created.name)


@pytest.fixture(scope="module")
def lifetime_stack(vercel: VercelHarness, make_stack: Callable[..., LocalStack]) -> LocalStack:
    # Sessions of at most a minute, and a reaper that runs every second.
    return make_stack(vercel, SANDBOX_VERCEL_MAX_SESSION_SECONDS="60", SANDBOX_REAP_INTERVAL_SECONDS="1")


async def test_commands_extend_a_session_shorter_than_the_ttl(
    vercel: VercelHarness, lifetime_stack: LocalStack, emulator: Emulator
) -> None:
    c = vercel.client(lifetime_stack.address, lifetime_stack.client_token)
    created = await c.create(spec=pb.SandboxSpec(ttl=duration_pb2.Duration(seconds=3600)))
    try:
        session = emulator.sessions[emulator.sandboxes[created.name.rsplit("/", 1)[1]].session_id]
        assert session.timeout_ms == 60_000  # capped by the plan's maximum session length
        await c.run(created.name, ["true"])
        # Extended to last ten more minutes while commands run, still within the TTL.
        assert 590_000 <= session.timeout_ms <= 3_600_000
    finally:
        await c.delete(created.name)
        await c.close()


async def test_expired_sandbox_stops_and_is_reaped(
    vercel: VercelHarness, lifetime_stack: LocalStack, emulator: Emulator
) -> None:
    c = vercel.client(lifetime_stack.address, lifetime_stack.client_token)
    created = await c.create(spec=pb.SandboxSpec(ttl=duration_pb2.Duration(seconds=2)))
    try:
        native_id = created.name.rsplit("/", 1)[1]
        assert emulator.sessions[emulator.sandboxes[native_id].session_id].timeout_ms == 2000
        for _ in range(100):
            if native_id not in emulator.sandboxes:
                break
            await asyncio.sleep(0.1)
        assert native_id not in emulator.sandboxes
        await expect_error(c.get(created.name), grpc.StatusCode.NOT_FOUND)
    finally:
        await c.delete(created.name)
        await c.close()


async def test_silent_long_command_keeps_its_short_session_alive(
    vercel: VercelHarness, make_stack: Callable[..., LocalStack]
) -> None:
    # Sessions of 5 s at first; a silent 8 s command outlives that only if the provider keeps extending it.
    stack = make_stack(
        vercel,
        SANDBOX_VERCEL_MAX_SESSION_SECONDS="5",
        SANDBOX_VERCEL_SESSION_MARGIN_SECONDS="4",
        SANDBOX_VERCEL_SESSION_CHECK_SECONDS="1",
    )
    c = vercel.client(stack.address, stack.client_token)
    created = await c.create()
    try:
        result = await c.run(created.name, ["sh", "-c", "sleep 8; echo done"])
        assert bytes(result.stdout) == b"done\n"
        assert result.finished is not None and result.finished.state == pb.Execution.STATE_SUCCEEDED
        assert (await c.get(created.name)).state == pb.Sandbox.STATE_RUNNING
    finally:
        await c.delete(created.name)
        await c.close()


async def test_failed_upload_is_retried_then_reported_and_leaves_the_file_as_it_was(
    rpc: Client, emulator: Emulator
) -> None:
    created = await rpc.create()
    try:
        await rpc.write_file(created.name, "/tmp/kept", b"old")
        emulator.inject(method="POST", path="/fs/write$", status=503, times=1)
        await rpc.write_file(created.name, "/tmp/kept", b"new after a retry")
        emulator.inject(method="POST", path="/fs/write$", status=503, times=100)
        await expect_error(
            rpc.write_file(created.name, "/tmp/kept", b"never written"),
            grpc.StatusCode.UNAVAILABLE,
            "PROVIDER_UNAVAILABLE",
        )
        emulator.clear_faults()
        assert [c.data for c in await rpc.read_file(created.name, "/tmp/kept")] == [b"new after a retry"]
    finally:
        await rpc.delete(created.name)


async def test_ports_are_declared_at_creation_and_read_from_the_routes(rpc: Client, emulator: Emulator) -> None:
    created = await endpoints.create_with_ports(rpc, [5173, 3000])
    try:
        native = created.name.rsplit("/", 1)[1]
        assert emulator.sandboxes[native].ports == [5173, 3000]
        assert [(e.port, e.url) for e in created.endpoints] == [
            (3000, f"https://3000-{native}.{DOMAIN}"),
            (5173, f"https://5173-{native}.{DOMAIN}"),
        ]
    finally:
        await rpc.delete(created.name)


async def test_a_sandbox_gone_while_listing_is_left_out_and_the_page_stays_full(
    rpc: Client, emulator: Emulator
) -> None:
    created = [await endpoints.create_with_ports(rpc, [3000], labels={"listing": "race"}) for _ in range(4)]
    names = sorted(c.name for c in created)
    try:
        request = pb.ListSandboxesRequest(parent="providers/vercel", labels={"listing": "race"}, page_size=2)
        # The first is destroyed between the query and the read of its routes (that read answers 404 once).
        emulator.inject(method="GET", path=f"^/v2/sandboxes/{names[0].rsplit('/', 1)[1]}$", status=404)
        first = await rpc.stub.ListSandboxes(request, metadata=rpc.metadata)
        assert [s.name for s in first.sandboxes] == names[1:3] and first.next_page_token
        request.page_token = first.next_page_token
        second = await rpc.stub.ListSandboxes(request, metadata=rpc.metadata)
        assert [s.name for s in second.sandboxes] == names[3:] and not second.next_page_token
        assert all(len(s.endpoints) == 1 for s in [*first.sandboxes, *second.sandboxes])
    finally:
        for sandbox in created:
            await rpc.delete(sandbox.name)
