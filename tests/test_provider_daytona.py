"""Daytona-specific behaviour through the orchestrator: every fault the emulator can inject gets the
documented status code, and no sandbox is left in the emulator after any test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

from orchestrator.local_stack import LocalStack
from provider_kit.errors import error_info
from sandbox.v1 import sandbox_pb2 as pb
from tests import endpoints
from tests.client import Client, Collected, expect_error
from tests.emulators.daytona.emulator import DOMAIN, DaytonaEmulator, Fault
from tests.git_server import GitServer
from tests.harness import ProviderHarness

SANDBOX_PATH = r"^GET /api/sandbox/[^/]+$"
CREATE_PATH = r"^POST /api/sandbox$"
LOGS_PATH = r"^WS /toolbox/.*/logs$"


@pytest.fixture(scope="module")
def daytona(harnesses: Callable[[str], ProviderHarness]) -> ProviderHarness:
    return harnesses("daytona")


@pytest.fixture(scope="module")
def emulator(daytona: ProviderHarness) -> DaytonaEmulator:
    found: DaytonaEmulator = daytona.emulator  # type: ignore[attr-defined]
    return found


@pytest.fixture(scope="module")
def daytona_stack(daytona: ProviderHarness, shared_stacks: Callable[[ProviderHarness], LocalStack]) -> LocalStack:
    return shared_stacks(daytona)


@pytest.fixture
async def rpc(daytona_stack: LocalStack, daytona: ProviderHarness) -> AsyncIterator[Client]:
    client = daytona.client(daytona_stack.address, daytona_stack.client_token)
    yield client
    await client.close()


@pytest.fixture(autouse=True)
def no_sandbox_left(emulator: DaytonaEmulator) -> Iterator[None]:
    # Only this test's sandboxes count (a failed shared test may have left one behind).
    before = set(emulator.sandbox_ids())
    yield
    emulator.clear_faults()
    left = sorted(set(emulator.sandbox_ids()) - before)
    for sandbox_id in left:
        emulator.vanish(sandbox_id)
    assert not left, f"sandboxes left in the emulator: {left}"


def _native(name: str) -> str:
    return name.rsplit("/", 1)[1]


async def test_transient_5xx_on_reads_is_retried(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await rpc.create()
    try:
        fault = emulator.inject(Fault(SANDBOX_PATH, status=503, times=2))
        assert (await rpc.get(created.name)).state == pb.Sandbox.STATE_RUNNING
        assert fault.hits == 2
    finally:
        await rpc.delete(created.name)


async def test_persistent_5xx_is_unavailable(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await rpc.create()
    try:
        emulator.inject(Fault(SANDBOX_PATH, status=502, times=-1))
        await expect_error(rpc.get(created.name), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
        emulator.clear_faults()
        # Creation is not idempotent without a request id, so a failed create is never retried blindly.
        emulator.inject(Fault(CREATE_PATH, status=500, times=1))
        await expect_error(rpc.create(), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    finally:
        await rpc.delete(created.name)


async def test_rate_limit_is_resource_exhausted(rpc: Client, emulator: DaytonaEmulator) -> None:
    fault = emulator.inject(Fault(CREATE_PATH, status=429, times=1))
    await expect_error(rpc.create(), grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    assert fault.hits == 1


async def test_rejected_api_key_is_failed_precondition(
    make_stack: Callable[..., LocalStack], daytona: ProviderHarness
) -> None:
    stack = make_stack(daytona, DAYTONA_API_KEY="not-the-key-daytona-knows")
    client = daytona.client(stack.address, stack.client_token)
    try:
        # Never UNAUTHENTICATED: that would tell the client its own credential is wrong.
        await expect_error(client.create(), grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    finally:
        await client.close()
        stack.stop()


async def test_unreachable_api_is_unavailable(make_stack: Callable[..., LocalStack], daytona: ProviderHarness) -> None:
    stack = make_stack(daytona, DAYTONA_API_URL="http://127.0.0.1:9/api")
    client = daytona.client(stack.address, stack.client_token)
    try:
        await expect_error(client.create(), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
        await expect_error(
            client.get("providers/daytona/sandboxes/abc"), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"
        )
    finally:
        await client.close()
        stack.stop()


async def test_vanished_sandbox_is_not_found(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await rpc.create()
    emulator.vanish(_native(created.name))
    await expect_error(rpc.get(created.name), grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND")
    await expect_error(rpc.run(created.name, ["true"]), grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND")
    await rpc.delete(created.name)  # already gone is what the caller wants


async def test_slow_responses_do_not_fail_calls(rpc: Client, emulator: DaytonaEmulator) -> None:
    emulator.inject(Fault(CREATE_PATH, delay=3, times=1))
    created = await rpc.create()
    try:
        emulator.inject(Fault(LOGS_PATH, delay=2, times=1))
        result = await rpc.run(created.name, ["sh", "-c", "sleep 2; echo late"])
        assert bytes(result.stdout) == b"late\n"
    finally:
        await rpc.delete(created.name)


async def test_log_stream_dropped_midway_is_unavailable_then_reattaches(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await rpc.create()
    script = 'for i in $(seq 1 20); do echo "line $i"; sleep 0.05; done'
    try:
        emulator.inject(Fault(LOGS_PATH, close_ws_after=40, times=1))
        collected = Collected()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for event in rpc.run_stream(created.name, ["sh", "-c", script]):
                collected.add(event)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(err.value)
        assert info is not None and info.reason == "STREAM_INTERRUPTED"
        await rpc.attach(collected.name, collected)
        assert bytes(collected.stdout) == b"".join(b"line %d\n" % i for i in range(1, 21))
        assert collected.finished is not None and collected.finished.state == pb.Execution.STATE_SUCCEEDED
    finally:
        await rpc.delete(created.name)


async def test_env_is_not_left_in_session_history(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await rpc.create()
    try:
        value = "it's a value-123456\nwith $(no expansion)"
        script = 'printf "%s" "$TOKENISH"; ls /tmp/.sandbox-env-* 2>/dev/null | wc -l'
        emulator.requests.clear()
        stream = rpc.run_stream(created.name, ["sh", "-c", f"{script}; sleep 1"], env={"TOKENISH": value})
        commands: list[str] = []
        result = Collected()
        async for event in stream:
            result.add(event)
            commands = commands or emulator.session_commands(_native(created.name))
        assert bytes(result.stdout) == value.encode() + b"0\n"  # the env file is gone once read
        # env travels in a private file, never on a command line the daemon keeps, and each process's
        # session is deleted when its stream ends.
        assert commands and all("value-123456" not in c for c in commands)
        assert any(r.endswith("/files/bulk-upload") for r in emulator.requests)
        assert emulator.session_commands(_native(created.name)) == []
    finally:
        await rpc.delete(created.name)


async def test_consumer_leaving_early_ends_the_follower(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await rpc.create()
    try:
        stream = rpc.run_stream(created.name, ["sh", "-c", "echo started; sleep 60"])
        collected = Collected()
        async for event in stream:
            collected.add(event)
            if collected.stdout:
                break
        execution_id = collected.name.rsplit("/", 1)[1]
        native = _native(created.name)
        assert emulator.session_commands(native)
        stream.cancel()  # type: ignore[attr-defined]
        for _ in range(100):
            if not emulator.session_commands(native):
                break
            await asyncio.sleep(0.05)
        assert emulator.session_commands(native) == []
        # The execution itself is detached and still runs: only its follower went away.
        probe = f"ps -eo args | grep -c '^[t]ail .*{execution_id}' || true; ps -eo args | grep -c '^[s]leep 60'"
        followers = await rpc.run(created.name, ["sh", "-c", probe])
        assert bytes(followers.stdout).split() == [b"0", b"1"]
    finally:
        await rpc.delete(created.name)


async def test_resources_labels_and_ttl_reach_daytona(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await rpc.create(
        spec=pb.SandboxSpec(
            image="sandbox-base:bookworm-2",
            network_mode="host",
            milli_cpus=2000,
            memory_bytes=2 << 30,
            ttl=duration_pb2.Duration(seconds=600),
        ),
        labels={"team": "payments"},
    )
    try:
        dto = emulator.sandbox(_native(created.name))
        assert (dto["cpu"], dto["memory"]) == (2, 2)
        assert dto["labels"]["sandbox.platform.label/team"] == "payments"
        assert dto["labels"]["sandbox.platform/tenant"]
        assert dto["autoDestroyAt"]  # Daytona itself ends the sandbox when its TTL does
        await expect_error(
            rpc.create(spec=pb.SandboxSpec(image="no-such-image:404", network_mode="host")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "IMAGE_NOT_FOUND",
        )
        await expect_error(
            rpc.create(spec=pb.SandboxSpec(network_mode="host", milli_cpus=64000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "LIMIT_EXCEEDED",
        )
    finally:
        await rpc.delete(created.name)


async def test_clone_goes_through_the_native_git_api_and_the_push_through_the_kit(
    rpc: Client, emulator: DaytonaEmulator, git_server: GitServer
) -> None:
    name = f"repo-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(name, {"README.md": "old\n"})
    token = git_server.token or ""
    emulator.requests.clear()
    created = await rpc.create(repository=pb.RepositorySetup(url=git_server.url(name), token=token, branch="native"))
    try:
        git_calls = [r.rsplit("/", 2)[-2:] for r in emulator.requests if "/git/" in r]
        assert [call[-1] for call in git_calls] == ["clone", "branches", "branches", "checkout"]
        setup = await rpc.attach(created.workspace.setup_execution, Collected())
        assert setup.finished is not None and setup.finished.state == pb.Execution.STATE_SUCCEEDED
        state = await rpc.run(
            created.name, ["sh", "-c", "cd /workspace && git branch --show-current && stat -c %U .git"]
        )
        assert bytes(state.stdout) == b"native\nagent\n"
        await rpc.run_agent(created.name, "shell", "echo native > native.txt")
        emulator.requests.clear()
        pushed = await rpc.stub.PushChanges(
            pb.PushChangesRequest(sandbox=created.name, message="native push", token=token), metadata=rpc.metadata
        )
        assert pushed.changed and pushed.files_changed == 1
        assert git_server.read_file(name, "native", "native.txt") == b"native\n"
        # The push is the kit's (from outside the sandbox): Daytona's git API, which reads the checkout's
        # config, never gets the token.
        assert [r for r in emulator.requests if "/git/" in r] == []
        log = await rpc.run(created.name, ["git", "-C", "/workspace", "log", "-1", "--format=%an <%ae>|%s"])
        assert bytes(log.stdout) == b"Sandbox Agent <agent@sandbox.invalid>|native push\n"
        # The token reached only that API call: not the sandbox's session commands, files or git config.
        assert all(token not in c for c in emulator.session_commands(_native(created.name)))
        config = await rpc.run(created.name, ["sh", "-c", "cat /workspace/.git/config; env"])
        assert token.encode() not in bytes(config.stdout)
    finally:
        await rpc.delete(created.name)


@pytest.mark.parametrize("problem", ["wrong token", "missing base ref"])
async def test_refused_clone_fails_create_and_leaves_nothing(
    problem: str, rpc: Client, emulator: DaytonaEmulator, git_server: GitServer
) -> None:
    name = f"repo-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(name, {"README.md": "old\n"})
    token = "wrong-token-0123456789" if problem == "wrong token" else git_server.token or ""
    base_ref = "no-such-branch" if problem == "missing base ref" else ""
    setup = pb.RepositorySetup(url=git_server.url(name), token=token, base_ref=base_ref)
    err = await expect_error(rpc.create(repository=setup), grpc.StatusCode.FAILED_PRECONDITION, "CLONE_FAILED")
    assert token not in (err.details() or "")
    # The autouse fixture checks that the sandbox made for the clone was deleted.


async def test_failed_upload_is_reported_and_leaves_the_file_as_it_was(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await rpc.create()
    try:
        await rpc.write_file(created.name, "/tmp/kept", b"old")
        emulator.inject(Fault(r"POST /toolbox/.*/files/bulk-upload$", status=500, times=-1))
        await expect_error(
            rpc.write_file(created.name, "/tmp/kept", b"new"), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"
        )
        emulator.clear_faults()
        assert [c.data for c in await rpc.read_file(created.name, "/tmp/kept")] == [b"old"]
    finally:
        await rpc.delete(created.name)


async def test_a_port_of_a_private_sandbox_comes_with_its_preview_token(
    rpc: Client, emulator: DaytonaEmulator, daytona: ProviderHarness
) -> None:
    created = await endpoints.create_with_ports(rpc, [4321])
    try:
        native = _native(created.name)
        [endpoint] = created.endpoints
        assert endpoint.url == f"https://4321-{native}.{DOMAIN}"
        assert dict(endpoint.headers)["X-Daytona-Preview-Token"]
        # Without the token the edge refuses; with it, the request reaches the port (where nothing listens yet).
        assert (await endpoints.get(daytona, endpoint, "/", {}, attempts=1))[0] == 401
        assert (await endpoints.get(daytona, endpoint, "/", dict(endpoint.headers), attempts=1))[0] == 502
    finally:
        await rpc.delete(created.name)


async def test_create_whose_preview_links_fail_leaves_no_sandbox(rpc: Client, emulator: DaytonaEmulator) -> None:
    fault = emulator.inject(Fault(r"^GET /api/sandbox/[^/]+/ports/\d+/preview-url$", status=500, times=-1))
    await expect_error(endpoints.create_with_ports(rpc, [4321]), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
    assert fault.hits >= 1
    # no_sandbox_left checks that the sandbox made before the failure was deleted.


async def test_preview_links_are_read_only_for_calls_that_show_them(rpc: Client, emulator: DaytonaEmulator) -> None:
    created = await endpoints.create_with_ports(rpc, [4321])
    try:
        emulator.requests.clear()
        # Commands, files and pushes read the sandbox too, but show no endpoints: no preview-link calls.
        for _ in range(2):  # both provider replicas of the stack read the sandbox at least once
            await rpc.run(created.name, ["true"])
            await rpc.write_file(created.name, "/tmp/f", b"x")
        assert not [r for r in emulator.requests if r.endswith("/preview-url")]
        assert (await rpc.get(created.name)).endpoints == created.endpoints
        assert [r for r in emulator.requests if r.endswith("/preview-url")]
    finally:
        await rpc.delete(created.name)
