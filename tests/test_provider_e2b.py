"""E2B-specific behaviour through the orchestrator: every injected fault gives its documented status code,
retries happen only where they are safe, the sandbox's E2B timeout follows the requested lifetime, and no
sandbox is left in the emulator after any test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests import endpoints
from tests.client import Client, Collected, expect_error
from tests.emulators.e2b.emulator import DOMAIN, E2BEmulator
from tests.emulators.e2b.harness import E2BHarness
from tests.harness import ProviderHarness

CREATE = r"^POST /v2/sandboxes$"
LINES = 30
SCRIPT = f'for i in $(seq 1 {LINES}); do echo "line $i"; sleep 0.05; done'


@pytest.fixture(scope="module")
def e2b(harnesses: Callable[[str], ProviderHarness]) -> E2BHarness:
    harness = harnesses("e2b")
    assert isinstance(harness, E2BHarness)
    return harness


@pytest.fixture(scope="module")
def e2b_stack(e2b: E2BHarness, make_stack: Callable[..., LocalStack]) -> LocalStack:
    # A short per-request timeout: slow answers fail fast, and streams must not be bound by it.
    return make_stack(e2b, SANDBOX_E2B_REQUEST_TIMEOUT_SECONDS="2")


@pytest.fixture
def emulator(e2b: E2BHarness) -> Iterator[E2BEmulator]:
    e2b.emulator.clear_faults()
    yield e2b.emulator
    e2b.emulator.clear_faults()
    assert e2b.emulator.sandbox_ids() == [], "a test left a sandbox in the emulator"


@pytest.fixture
async def rpc(e2b: E2BHarness, e2b_stack: LocalStack) -> AsyncIterator[Client]:
    c = e2b.client(e2b_stack.address, e2b_stack.client_token)
    yield c
    await c.close()


async def test_unreachable_api_is_unavailable(
    e2b: E2BHarness, make_stack: Callable[..., LocalStack], emulator: E2BEmulator
) -> None:
    # Nothing listens on port 1 of loopback.
    stack = make_stack(e2b, E2B_API_URL="http://127.0.0.1:1", E2B_SANDBOX_URL="http://127.0.0.1:1")
    client = e2b.client(stack.address, stack.client_token)
    try:
        await expect_error(client.create(), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
        listing = client.stub.ListSandboxes(pb.ListSandboxesRequest(parent="providers/e2b"), metadata=client.metadata)
        await expect_error(listing, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    finally:
        await client.close()
        stack.stop()


async def test_rejected_api_key_is_the_operators_problem(
    e2b: E2BHarness, make_stack: Callable[..., LocalStack], emulator: E2BEmulator
) -> None:
    stack = make_stack(e2b, E2B_API_KEY="e2b_" + "0" * 40)
    client = e2b.client(stack.address, stack.client_token)
    try:
        # Never UNAUTHENTICATED: the client's own credential was fine.
        await expect_error(client.create(), grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
        providers = await client.stub.ListProviders(pb.ListProvidersRequest(), metadata=client.metadata)
        assert [(p.name, p.ready) for p in providers.providers] == [("e2b", False)]
    finally:
        await client.close()
        stack.stop()
    assert emulator.count(CREATE) == 0 or emulator.sandbox_ids() == []


async def test_rate_limit_is_resource_exhausted(rpc: Client, emulator: E2BEmulator) -> None:
    emulator.fail(CREATE, 429, times=None, headers={"Retry-After": "0"})
    before = emulator.count(CREATE)
    await expect_error(rpc.create(), grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    # The SDK retried (the idempotency key makes create safe to retry), then gave up: 1 + 3 attempts.
    assert emulator.count(CREATE) - before == 4


async def test_transient_503_on_create_is_retried_and_makes_one_sandbox(rpc: Client, emulator: E2BEmulator) -> None:
    emulator.fail(CREATE, 503, times=1, headers={"Retry-After": "0"})
    before = emulator.count(CREATE)
    created = await rpc.create(request_id="retried-create")
    try:
        assert emulator.count(CREATE) - before == 2
        assert emulator.sandbox_ids() == [created.name.rsplit("/", 1)[1]]
    finally:
        await rpc.delete(created.name)


async def test_server_error_is_unavailable_and_not_retried(rpc: Client, emulator: E2BEmulator) -> None:
    # A 500 may have happened after the work was done: the SDK does not retry it, and neither does the driver.
    emulator.fail(CREATE, 500, times=None)
    before = emulator.count(CREATE)
    await expect_error(rpc.create(), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    assert emulator.count(CREATE) - before == 1


async def test_transient_502_on_a_read_is_retried(rpc: Client, emulator: E2BEmulator) -> None:
    created = await rpc.create()
    try:
        native_id = created.name.rsplit("/", 1)[1]
        emulator.fail(rf"^GET /sandboxes/{native_id}$", 502, times=2, headers={"Retry-After": "0"})
        fetched = await rpc.get(created.name)
        assert fetched.state == pb.Sandbox.STATE_RUNNING
    finally:
        await rpc.delete(created.name)


async def test_slow_api_is_unavailable(rpc: Client, emulator: E2BEmulator) -> None:
    created = await rpc.create()
    try:
        native_id = created.name.rsplit("/", 1)[1]
        # Longer than the stack's 2 s request timeout.
        emulator.slow(rf"^GET /sandboxes/{native_id}$", 4, times=None)
        await expect_error(rpc.get(created.name), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
        emulator.clear_faults()
        assert (await rpc.get(created.name)).state == pb.Sandbox.STATE_RUNNING
    finally:
        await rpc.delete(created.name)


async def test_streams_outlive_the_request_timeout(rpc: Client, emulator: E2BEmulator) -> None:
    created = await rpc.create()
    try:
        # Silent for longer than the 2 s request timeout, then output: the stream has no overall deadline.
        result = await rpc.run(created.name, ["sh", "-c", "echo before; sleep 5; echo after"])
        assert bytes(result.stdout) == b"before\nafter\n"
        assert result.finished is not None and result.finished.state == pb.Execution.STATE_SUCCEEDED
    finally:
        await rpc.delete(created.name)


async def test_vanished_sandbox_is_not_found(rpc: Client, emulator: E2BEmulator) -> None:
    created = await rpc.create()
    await rpc.run(created.name, ["true"])  # this replica now holds a connection to the sandbox
    emulator.vanish(created.name.rsplit("/", 1)[1])
    await expect_error(rpc.get(created.name), grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND")
    # The process call goes to envd, whose edge answers that the sandbox is gone.
    await expect_error(rpc.run(created.name, ["true"]), grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND")
    await rpc.delete(created.name)  # already gone: deleting succeeds


async def test_dropped_stream_is_unavailable_and_the_command_goes_on(rpc: Client, emulator: E2BEmulator) -> None:
    created = await rpc.create()
    try:
        emulator.drop_stream(after_events=3)
        collected = Collected()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for event in rpc.run_stream(created.name, ["sh", "-c", f"echo started >> /tmp/runs; {SCRIPT}"]):
                collected.add(event)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert collected.name and collected.finished is None
        await rpc.attach(collected.name, collected)
        assert bytes(collected.stdout) == b"".join(b"line %d\n" % i for i in range(1, LINES + 1))
        assert collected.finished is not None and collected.finished.state == pb.Execution.STATE_SUCCEEDED
        # Not retried: the start was not repeated after the drop, which would have run the command twice.
        assert bytes((await rpc.run(created.name, ["cat", "/tmp/runs"])).stdout) == b"started\n"
    finally:
        await rpc.delete(created.name)


async def test_sandbox_timeout_follows_the_requested_lifetime(rpc: Client, emulator: E2BEmulator) -> None:
    created = await rpc.create(spec=pb.SandboxSpec(network_mode="host", ttl=duration_pb2.Duration(seconds=600)))
    try:
        end_at = emulator.end_at(created.name.rsplit("/", 1)[1])
        assert abs(end_at.timestamp() - created.expire_time.seconds) <= 2
        # Running commands (which connect to the sandbox) does not change its lifetime.
        await rpc.run(created.name, ["true"])
        assert emulator.end_at(created.name.rsplit("/", 1)[1]) == end_at
    finally:
        await rpc.delete(created.name)
    short = await rpc.create(spec=pb.SandboxSpec(network_mode="host", ttl=duration_pb2.Duration(seconds=2)))
    for _ in range(60):
        if not emulator.sandbox_ids():
            break
        await asyncio.sleep(0.25)
    # E2B ended the sandbox when its timeout passed, with the lifetime the client asked for.
    await expect_error(rpc.get(short.name), grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND")


async def test_unsupported_spec_fields_are_invalid(rpc: Client, emulator: E2BEmulator) -> None:
    await expect_error(
        rpc.create(spec=pb.SandboxSpec(network_mode="host", milli_cpus=500)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNSUPPORTED_FIELD",
    )
    await expect_error(
        rpc.create(spec=pb.SandboxSpec(network_mode="host", image="no-such-template")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "IMAGE_NOT_FOUND",
    )
    await expect_error(
        rpc.create(spec=pb.SandboxSpec(network_mode="host", ttl=duration_pb2.Duration(seconds=2 * 86400))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )


async def test_metadata_is_the_only_state(
    rpc: Client, emulator: E2BEmulator, e2b: E2BHarness, make_stack: Callable[..., LocalStack]
) -> None:
    created = await rpc.create(labels={"team": "e2b"}, request_id="meta-1")
    # A fresh replica that never saw the sandbox reads it back whole from E2B's metadata.
    stack = make_stack(e2b)
    fresh = e2b.client(stack.address, stack.client_token)
    try:
        fetched = await fresh.get(created.name)
        assert (dict(fetched.labels), fetched.request_id, fetched.spec) == ({"team": "e2b"}, "meta-1", created.spec)
        assert fetched.expire_time == created.expire_time
        assert bytes((await fresh.run(created.name, ["echo", "hi"])).stdout) == b"hi\n"
    finally:
        await fresh.delete(created.name)
        await fresh.close()
        stack.stop()


async def test_a_consumer_that_stops_early_releases_the_stream(rpc: Client, emulator: E2BEmulator) -> None:
    created = await rpc.create()
    try:
        before = emulator.open_streams
        call = rpc.run_stream(created.name, ["sh", "-c", "while :; do echo tick; sleep 0.01; done"])
        collected = Collected()
        async for event in call:
            collected.add(event)
            if len(collected.stdout) > 100:
                break
        assert emulator.open_streams > before
        call.cancel()  # type: ignore[attr-defined]  # the gRPC call object
        # The provider closes its envd stream when its own caller goes away.
        for _ in range(40):
            if emulator.open_streams == before:
                break
            await asyncio.sleep(0.25)
        assert emulator.open_streams == before
        await rpc.stub.CancelExecution(pb.CancelExecutionRequest(name=collected.name), metadata=rpc.metadata)
    finally:
        await rpc.delete(created.name)


async def test_failed_upload_is_reported_and_leaves_the_file_as_it_was(rpc: Client, emulator: E2BEmulator) -> None:
    created = await rpc.create()
    try:
        await rpc.write_file(created.name, "/tmp/kept", b"old")
        emulator.fail(r"^POST /files$", 429, times=None, headers={"Retry-After": "0"})
        await expect_error(
            rpc.write_file(created.name, "/tmp/kept", b"new"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "PROVIDER_RATE_LIMITED",
        )
        emulator.clear_faults()
        assert [c.data for c in await rpc.read_file(created.name, "/tmp/kept")] == [b"old"]
    finally:
        await rpc.delete(created.name)


async def test_a_port_is_served_at_the_host_the_sdk_names(rpc: Client, emulator: E2BEmulator) -> None:
    # E2B exposes every port without declaring it: the platform reports the SDK's own host for each of spec.ports.
    created = await endpoints.create_with_ports(rpc, [5173, 3000])
    try:
        native = created.name.rsplit("/", 1)[1]
        assert [(e.port, e.url, dict(e.headers)) for e in created.endpoints] == [
            (3000, f"https://3000-{native}.{DOMAIN}", {}),
            (5173, f"https://5173-{native}.{DOMAIN}", {}),
        ]
    finally:
        await rpc.delete(created.name)
