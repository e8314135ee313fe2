"""Idempotent creation and tenant isolation."""

from __future__ import annotations

import asyncio

import docker
import grpc
import pytest

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client
from tests.conftest import OTHER_TENANT_TOKEN
from tests.harness import OWNER_LABEL, ProviderHarness


async def test_create_retried_with_request_id_makes_one_container(
    stack: LocalStack, harness: ProviderHarness, docker_client: docker.DockerClient, owner: str
) -> None:
    # Retries race through both orchestrator replicas (and so both provider replicas).
    clients = [harness.client(p.address, stack.client_token) for p in stack.orchestrator_processes]
    results = await asyncio.gather(*(clients[i % 2].create(request_id="retry-me-1") for i in range(6)))
    try:
        assert len({r.name for r in results}) == 1
        assert results[0].request_id == "retry-me-1"
        listed = await clients[1].stub.ListSandboxes(
            pb.ListSandboxesRequest(parent=f"providers/{harness.name}"), metadata=clients[1].metadata
        )
        assert [s.name for s in listed.sandboxes if s.request_id == "retry-me-1"] == [results[0].name]
        if harness.name == "docker":
            containers = docker_client.containers.list(
                all=True, filters={"label": [f"{OWNER_LABEL}={owner}", "sandbox.platform/request-id=retry-me-1"]}
            )
            assert len(containers) == 1

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await clients[0].create(request_id="retry-me-1", spec=pb.SandboxSpec(network_mode="none"))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        await clients[0].delete(results[0].name)
        for c in clients:
            await c.close()


async def test_same_request_id_in_another_tenant_is_independent(stack: LocalStack, harness: ProviderHarness) -> None:
    mine, theirs = harness.client(stack.address, stack.client_token), harness.client(stack.address, OTHER_TENANT_TOKEN)
    try:
        a = await mine.create(request_id="shared-id")
        b = await theirs.create(request_id="shared-id")
        assert a.name != b.name
    finally:
        await mine.delete(a.name)
        await theirs.delete(b.name)
        await mine.close()
        await theirs.close()


async def test_other_tenant_sees_nothing(stack: LocalStack, client: Client, sandbox: str) -> None:
    other = Client(stack.address, OTHER_TENANT_TOKEN, provider=client.provider)
    try:
        done = await client.run(sandbox, ["echo", "private"])
        calls = {
            "get": other.get(sandbox),
            "run": other.run(sandbox, ["cat", "/etc/hostname"]),
            "attach": other.stub.AttachExecution(
                pb.AttachExecutionRequest(name=done.name), metadata=other.metadata
            ).read(),
            "get_execution": other.stub.GetExecution(pb.GetExecutionRequest(name=done.name), metadata=other.metadata),
            "cancel": other.stub.CancelExecution(pb.CancelExecutionRequest(name=done.name), metadata=other.metadata),
            "write_file": other.stub.WriteFile(
                pb.WriteFileRequest(sandbox=sandbox, path="/tmp/intruder", content=b"x"), metadata=other.metadata
            ),
            "read_file": other.stub.ReadFile(
                pb.ReadFileRequest(sandbox=sandbox, path="/etc/hostname"), metadata=other.metadata
            ).read(),
        }
        for what, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, what
        listed = await other.stub.ListSandboxes(
            pb.ListSandboxesRequest(parent=f"providers/{client.provider}"), metadata=other.metadata
        )
        assert sandbox not in [s.name for s in listed.sandboxes]
        # Deleting someone else's sandbox looks like deleting a missing one, and touches nothing.
        await other.delete(sandbox)
        assert (await client.get(sandbox)).state == pb.Sandbox.STATE_RUNNING
    finally:
        await other.close()


async def test_unauthenticated_calls_are_refused(stack: LocalStack, harness: ProviderHarness) -> None:
    for token in ("", "not-a-valid-token-at-all"):
        anonymous = Client(stack.address, token)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await anonymous.stub.ListSandboxes(
                pb.ListSandboxesRequest(parent=f"providers/{harness.name}"), metadata=anonymous.metadata
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await anonymous.close()


async def test_providers_accept_only_the_orchestrator(stack: LocalStack, harness: ProviderHarness) -> None:
    provider = stack.provider_processes[0].address
    # A client token, or the right tenant header without the orchestrator's credential, is not enough.
    for metadata in (
        (("authorization", f"Bearer {stack.client_token}"), ("x-sandbox-tenant", "local")),
        (("x-sandbox-tenant", "local"),),
    ):
        direct = Client(provider, "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await direct.stub.ListSandboxes(
                pb.ListSandboxesRequest(parent=f"providers/{harness.name}"), metadata=metadata
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await direct.close()
