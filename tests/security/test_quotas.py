"""Issue 11, point 9: per-tenant quotas, counted from the provider's own records, across provider replicas."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

import docker
import grpc

from orchestrator.local_stack import LocalStack
from provider_kit.errors import error_info
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, expect_error
from tests.harness import OWNER_LABEL, ProviderHarness

SECOND_TOKEN = secrets.token_urlsafe(24)
# Both tenants' sandboxes: "none" needs no grant (only the stack's own tenant may have host networking).
SPEC = pb.SandboxSpec(network_mode="none")


def _containers_of(docker_client: docker.DockerClient, owner: str, tenant: str) -> list[str]:
    labels = [f"{OWNER_LABEL}={owner}", f"sandbox.platform/tenant={tenant}"]
    return sorted(c.name for c in docker_client.containers.list(all=True, filters={"label": labels}))


async def test_sandbox_quota_per_tenant_across_replicas(
    make_stack: Callable[..., LocalStack],
    harnesses: Callable[[str], ProviderHarness],
    docker_client: docker.DockerClient,
) -> None:
    docker_harness = harnesses("docker")
    # Two provider replicas behind the orchestrator: creates land on both, and neither keeps a count.
    stack = make_stack(
        docker_harness, providers=2, extra_tokens={SECOND_TOKEN: "quota-b"}, SANDBOX_MAX_SANDBOXES_PER_TENANT="2"
    )
    first = Client(stack.address, stack.client_token, spec=SPEC)
    second = Client(stack.address, SECOND_TOKEN, spec=SPEC)
    kept: list[tuple[Client, str]] = []
    try:
        # Five at once: at most two survive, whichever replica served them; the others are refused and gone.
        results = await asyncio.gather(*(first.create() for _ in range(5)), return_exceptions=True)
        made = [r for r in results if isinstance(r, pb.Sandbox)]
        kept += [(first, s.name) for s in made]
        refused = [r for r in results if not isinstance(r, pb.Sandbox)]
        assert 1 <= len(made) <= 2, results
        for err in refused:
            assert isinstance(err, grpc.aio.AioRpcError), err
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            info = error_info(err)
            assert info is not None and info.reason == "QUOTA_EXCEEDED"
        names = sorted(s.name.rsplit("/", 1)[1] for s in made)
        assert _containers_of(docker_client, docker_harness.owner, "local") == names

        # Filled up one at a time, the third is refused with a message that says what to do.
        for _, name in kept:
            await first.delete(name)
        kept = [(first, (await first.create(request_id="quota-retry")).name), (first, (await first.create()).name)]
        err = await expect_error(first.create(), grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        assert "quota" in (err.details() or "") and "delete one" in (err.details() or "")
        listed = await first.stub.ListSandboxes(
            pb.ListSandboxesRequest(parent="providers/docker"), metadata=first.metadata
        )
        assert sorted(s.name for s in listed.sandboxes) == sorted(name for _, name in kept)
        # A retry of a create that was admitted is not a new sandbox: it gets its sandbox, quota full or not.
        assert (await first.create(request_id="quota-retry")).name == kept[0][1]

        # Another tenant has a quota of its own.
        other = await second.create()
        kept.append((second, other.name))

        # Deleting one makes room.
        client, name = kept.pop(0)
        await client.delete(name)
        kept.append((first, (await first.create()).name))
        assert len(_containers_of(docker_client, docker_harness.owner, "local")) == 2
    finally:
        for client, name in kept:
            await client.delete(name)
        await first.close()
        await second.close()
        stack.stop()


async def test_a_sandbox_that_fills_its_disk_is_frozen(
    make_stack: Callable[..., LocalStack],
    harnesses: Callable[[str], ProviderHarness],
    docker_client: docker.DockerClient,
) -> None:
    # This engine stores containers on overlay2 over ext4, which cannot limit a container's size: the
    # provider measures sandboxes (here every second) and freezes those over the limit.
    docker_harness = harnesses("docker")
    stack = make_stack(docker_harness, SANDBOX_DOCKER_DISK_LIMIT_MB="64", SANDBOX_DOCKER_DISK_CHECK_SECONDS="1")
    client = Client(stack.address, stack.client_token, spec=SPEC)
    try:
        small, big = await client.create(), await client.create()
        try:
            write = "head -c {0}M /dev/zero > /var/tmp/fill && sync && echo wrote {0}"
            assert bytes((await client.run(small.name, ["sh", "-c", write.format(16)])).stdout) == b"wrote 16\n"
            # Within seconds the big one is frozen, mid-write or after: its commands say why (the one that was
            # writing too: its stream ends), and it no longer runs.
            deadline = asyncio.get_running_loop().time() + 20
            argv = ["sh", "-c", write.format(100)]
            while True:
                try:
                    await asyncio.wait_for(client.run(big.name, argv), 20)
                    argv = ["true"]
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
                    info = error_info(err)
                    assert info is not None and info.reason == "DISK_QUOTA_EXCEEDED", info
                    assert "64 MiB" in (err.details() or "")
                    break
                assert asyncio.get_running_loop().time() < deadline, "the sandbox over its disk limit still runs"
                await asyncio.sleep(0.5)
            assert (await client.get(big.name)).state == pb.Sandbox.STATE_STOPPED
            assert docker_client.containers.get(big.name.rsplit("/", 1)[1]).status == "paused"
            # Nothing more lands in it, and the sandbox under the limit is untouched.
            await expect_error(
                client.write_file(big.name, "/var/tmp/more", b"x" * 1024),
                grpc.StatusCode.FAILED_PRECONDITION,
                "DISK_QUOTA_EXCEEDED",
            )
            assert (await client.get(small.name)).state == pb.Sandbox.STATE_RUNNING
            assert bytes((await client.run(small.name, ["echo", "ok"])).stdout) == b"ok\n"
        finally:
            # A frozen sandbox can still be deleted.
            await client.delete(big.name)
            await client.delete(small.name)
        await expect_error(client.get(big.name), grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND")
    finally:
        await client.close()
        stack.stop()


async def test_execution_quota_per_sandbox_across_replicas(
    make_stack: Callable[..., LocalStack], harnesses: Callable[[str], ProviderHarness]
) -> None:
    """At most SANDBOX_MAX_EXECUTIONS_PER_SANDBOX run at once in a sandbox, whichever replica starts them (the
    count is taken inside the sandbox under a lock, so concurrent starts cannot all pass); a refused start
    leaves no execution, and an ended one makes room."""
    stack = make_stack(harnesses("docker"), providers=2, SANDBOX_MAX_EXECUTIONS_PER_SANDBOX="3")
    client = Client(stack.address, stack.client_token, spec=SPEC)
    sandbox = (await client.create()).name
    try:
        refused_names: list[str] = []

        async def start(argv: list[str]) -> str | grpc.aio.AioRpcError:
            stream = client.run_stream(sandbox, argv)
            name = ""
            try:
                async for event in stream:
                    if event.WhichOneof("event") == "started":
                        name = event.started.name
                    elif event.WhichOneof("event") == "output":
                        return name  # running: leave it running detached
            except grpc.aio.AioRpcError as err:
                refused_names.append(name)
                return err
            finally:
                stream.cancel()
            return name

        # Six at once through both replicas: exactly three run, three are refused.
        results = await asyncio.gather(*(start(["sh", "-c", "echo up; sleep 60"]) for _ in range(6)))
        running = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(running) == 3 and len(refused) == 3, results
        for err in refused:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            info = error_info(err)
            assert info is not None and info.reason == "QUOTA_EXCEEDED"
            assert "SANDBOX_MAX_EXECUTIONS_PER_SANDBOX" in (err.details() or "")
        # A refused start left nothing behind: its name (sent before the refusal) names no execution.
        for name in refused_names:
            get = client.stub.GetExecution(pb.GetExecutionRequest(name=name), metadata=client.metadata)
            await expect_error(get, grpc.StatusCode.NOT_FOUND, "EXECUTION_NOT_FOUND")
        await expect_error(client.run(sandbox, ["true"]), grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        # A cancelled one makes room.
        await client.stub.CancelExecution(pb.CancelExecutionRequest(name=running[0]), metadata=client.metadata)
        done = await client.run(sandbox, ["echo", "room"])
        assert bytes(done.stdout) == b"room\n"
    finally:
        await client.delete(sandbox)
        await client.close()
