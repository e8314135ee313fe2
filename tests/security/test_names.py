"""A sandbox is addressed only by its exact, full native id (issue "The sandbox is hostile", point 1).

Tenant B used to reach tenant A's container through an id prefix: the provider cached the owner under the
caller's spelling of the id, and the Docker engine resolves prefixes. Every alias of a sandbox (prefixes,
engine ids, a container the platform did not make) must now be NOT_FOUND, worded exactly like a sandbox that
never existed, so the answer tells nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import docker
import grpc
import pytest

from orchestrator.local_stack import LocalStack
from provider_kit.auth import TENANT_HEADER
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, expect_error
from tests.conftest import BASE_IMAGE, OTHER_TENANT_TOKEN

MISSING = "does not exist"


async def _drain(stream: AsyncIterator[object]) -> None:
    async for _ in stream:
        pass


def _calls(client: Client, name: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every RPC that addresses one sandbox, aimed at `name`."""
    stub, md = client.stub, client.metadata
    execution = f"{name}/executions/abc123"
    return {
        "GetSandbox": lambda: stub.GetSandbox(pb.GetSandboxRequest(name=name), metadata=md),
        "RunCommand": lambda: _drain(stub.RunCommand(pb.RunCommandRequest(sandbox=name, argv=["id"]), metadata=md)),
        "ReadFile": lambda: _drain(stub.ReadFile(pb.ReadFileRequest(sandbox=name, path="/etc/hostname"), metadata=md)),
        "WriteFile": lambda: stub.WriteFile(
            pb.WriteFileRequest(sandbox=name, path="/tmp/intruder", content=b"x"), metadata=md
        ),
        "GetExecution": lambda: stub.GetExecution(pb.GetExecutionRequest(name=execution), metadata=md),
        "CancelExecution": lambda: stub.CancelExecution(pb.CancelExecutionRequest(name=execution), metadata=md),
        "AttachExecution": lambda: _drain(stub.AttachExecution(pb.AttachExecutionRequest(name=execution), metadata=md)),
        "ExecuteAgent": lambda: _drain(
            stub.ExecuteAgent(
                pb.ExecuteAgentRequest(sandbox=name, agent="shell", instruction="id > /tmp/agent-ran"), metadata=md
            )
        ),
        "PushChanges": lambda: stub.PushChanges(pb.PushChangesRequest(sandbox=name), metadata=md),
        "AttachTask": lambda: _drain(stub.AttachTask(pb.AttachTaskRequest(name=name), metadata=md)),
    }


async def _all_not_found(client: Client, name: str) -> None:
    for rpc, call in _calls(client, name).items():
        err = await expect_error(call(), grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND")
        # Exactly the words for a sandbox that never existed: no oracle.
        assert err.details() == f"sandbox {name.rsplit('/', 1)[1]} {MISSING}", (rpc, err.details())


async def _untouched(owner: Client, name: str) -> None:
    """The victim's sandbox is still there and nobody wrote into it."""
    ran = await owner.run(name, ["sh", "-c", "ls /tmp/intruder /tmp/agent-ran 2>&1; true"])
    assert b"No such file" in ran.stdout and ran.stdout.count(b"No such file") == 2, ran.stdout


async def test_aliases_of_a_sandbox_are_not_found(docker_stack: LocalStack, docker_client: docker.DockerClient) -> None:
    victim = Client(docker_stack.address, docker_stack.client_token)
    attacker = Client(docker_stack.address, OTHER_TENANT_TOKEN)
    sandbox = await victim.create()
    try:
        native = sandbox.name.rsplit("/", 1)[1]
        container = docker_client.containers.get(native)
        aliases = [
            native[:6],  # "sbx-" and two hex digits: what the attack used
            native[:-1],
            native.upper(),
            container.id,  # the engine's full id
            container.id[:12],  # and its short id
        ]
        for alias in aliases:
            name = f"providers/docker/sandboxes/{alias}"
            await _all_not_found(attacker, name)
            # Not even the owner reaches its own sandbox by an alias: a name is exact or it is nothing.
            await _all_not_found(victim, name)
            await attacker.delete(name)  # deleting what does not exist succeeds, and deletes nothing
        # Another tenant's sandbox by its exact name: the same answer as for one that never existed.
        await _all_not_found(attacker, sandbox.name)
        await attacker.delete(sandbox.name)
        await _all_not_found(attacker, f"providers/docker/sandboxes/sbx-{secrets.token_hex(10)}")
        await _untouched(victim, sandbox.name)
    finally:
        await victim.delete(sandbox.name)
        await victim.close()
        await attacker.close()


async def test_a_container_the_platform_did_not_make_is_not_found(
    docker_stack: LocalStack, docker_client: docker.DockerClient
) -> None:
    """A container with a sandbox-shaped name but without this deployment's labels is not a sandbox."""
    client = Client(docker_stack.address, docker_stack.client_token)
    name = f"sbx-{secrets.token_hex(10)}"
    stranger = docker_client.containers.run(BASE_IMAGE, ["sleep", "300"], name=name, detach=True, network_mode="none")
    try:
        await _all_not_found(client, f"providers/docker/sandboxes/{name}")
        await client.delete(f"providers/docker/sandboxes/{name}")
        stranger.reload()
        assert stranger.status == "running"
        assert stranger.exec_run(["ls", "/tmp/intruder"]).exit_code != 0
    finally:
        stranger.remove(force=True)
        await client.close()


def _replica(stack: LocalStack, index: int, tenant: str) -> Client:
    """A client of one provider replica, as the orchestrator calls it."""
    address = stack.provider_processes[index].address
    return Client(address, stack.provider_token, ((TENANT_HEADER, tenant),))


@pytest.mark.parametrize("recreate", [False, True], ids=["deleted", "deleted-and-recreated"])
async def test_a_replica_forgets_an_owner_on_delete(docker_stack: LocalStack, recreate: bool) -> None:
    """A replica that served a sandbox (and so remembers its owner) learns nothing stale from that memory:
    after a delete, on either replica, the name is NOT_FOUND; recreated with the same request_id (the same
    name), it is its owner's again and still nobody else's."""
    owner_tenant = docker_stack.tenant
    first, second = _replica(docker_stack, 0, owner_tenant), _replica(docker_stack, 1, owner_tenant)
    strangers = [_replica(docker_stack, i, "stranger") for i in (0, 1)]
    request_id = f"names-{secrets.token_hex(4)}"
    sandbox = await first.create(request_id=request_id)
    try:
        for replica in (first, second):
            assert (await replica.run(sandbox.name, ["true"])).finished.exit_code == 0  # type: ignore[union-attr]
        await second.delete(sandbox.name)
        for replica in (first, second, *strangers):
            await _all_not_found(replica, sandbox.name)
        if recreate:
            again = await second.create(request_id=request_id)
            assert again.name == sandbox.name
            for replica in (first, second):
                assert (await replica.run(sandbox.name, ["true"])).finished.exit_code == 0  # type: ignore[union-attr]
            for replica in strangers:
                await _all_not_found(replica, sandbox.name)
    finally:
        await first.delete(sandbox.name)
        for c in (first, second, *strangers):
            await c.close()
