"""The whole sandbox lifecycle through the orchestrator, against a real Docker engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import docker
import docker.errors
import grpc
import pytest

from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, Collected
from tests.harness import ProviderHarness


async def test_create_get_list_run_delete(
    client: Client, harness: ProviderHarness, docker_client: docker.DockerClient
) -> None:
    created = await client.create(labels={"team": "payments", "purpose": "lifecycle"})
    assert created.name.startswith(f"providers/{harness.name}/sandboxes/")
    assert created.state == pb.Sandbox.STATE_RUNNING
    assert created.expire_time.seconds > created.create_time.seconds

    fetched = await client.get(created.name)
    assert fetched.labels == {"team": "payments", "purpose": "lifecycle"}
    assert fetched.spec == created.spec

    listed = await client.stub.ListSandboxes(
        pb.ListSandboxesRequest(parent=f"providers/{client.provider}", labels={"purpose": "lifecycle"}),
        metadata=client.metadata,
    )
    assert [s.name for s in listed.sandboxes] == [created.name]

    result = await client.run(created.name, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert bytes(result.stdout) == b"out\n"
    assert bytes(result.stderr) == b"err\n"
    assert result.finished is not None
    assert result.finished.state == pb.Execution.STATE_FAILED
    assert result.finished.exit_code == 3

    execution = await client.stub.GetExecution(pb.GetExecutionRequest(name=result.name), metadata=client.metadata)
    assert (execution.state, execution.exit_code, execution.stdout_bytes) == (pb.Execution.STATE_FAILED, 3, 4)
    assert execution.end_time.ToNanoseconds() >= execution.start_time.ToNanoseconds() > 0

    await client.delete(created.name)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.get(created.name)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Deleting again succeeds: the sandbox is gone, which is what the caller wants.
    await client.delete(created.name)


async def test_docker_resources_and_container_lifecycle(docker_rpc: Client, docker_client: docker.DockerClient) -> None:
    created = await docker_rpc.create(
        spec=pb.SandboxSpec(network_mode="host", milli_cpus=500, memory_bytes=256 << 20, pids_limit=128)
    )
    assert created.name.startswith("providers/docker/sandboxes/sbx-")
    assert created.spec.image == "sandbox-base:bookworm-2"
    native_id = created.name.rsplit("/", 1)[1]
    container = docker_client.containers.get(native_id)
    assert container.status == "running"
    assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert container.attrs["HostConfig"]["Memory"] == 256 << 20
    assert container.attrs["HostConfig"]["PidsLimit"] == 128
    await docker_rpc.delete(created.name)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(native_id)


async def test_env_working_dir_and_success(client: Client, sandbox: str) -> None:
    result = await client.run(
        sandbox,
        ["sh", "-c", 'printf "%s|%s|%s" "$GREETING" "$SPACED" "$(pwd)"'],
        env={"GREETING": "hello", "SPACED": "a b  'c' $(not run)"},
        working_dir="/usr",
    )
    assert bytes(result.stdout) == b"hello|a b  'c' $(not run)|/usr"
    assert result.finished is not None and result.finished.state == pb.Execution.STATE_SUCCEEDED


async def test_list_pages_through_every_sandbox(client: Client) -> None:
    created = await asyncio.gather(*(client.create(labels={"batch": "paging"}) for _ in range(5)))
    try:
        seen: list[str] = []
        token = ""
        while True:
            page = await client.stub.ListSandboxes(
                pb.ListSandboxesRequest(
                    parent=f"providers/{client.provider}", labels={"batch": "paging"}, page_size=2, page_token=token
                ),
                metadata=client.metadata,
            )
            assert len(page.sandboxes) <= 2
            seen.extend(s.name for s in page.sandboxes)
            token = page.next_page_token
            if not token:
                break
        assert seen == sorted(s.name for s in created)
    finally:
        await asyncio.gather(*(client.delete(s.name) for s in created))


async def test_cancel_stops_the_process(client: Client, sandbox: str) -> None:
    stream = client.run_stream(sandbox, ["sh", "-c", "echo started; sleep 300"])
    collected = await _read_until_output(stream)
    cancelled = await client.stub.CancelExecution(
        pb.CancelExecutionRequest(name=collected.name), metadata=client.metadata
    )
    assert cancelled.state == pb.Execution.STATE_CANCELLED
    async for event in stream:
        collected.add(event)
    assert collected.finished is not None and collected.finished.state == pb.Execution.STATE_CANCELLED
    processes = await client.run(sandbox, ["sh", "-c", "ps -eo args | grep -c '^sleep 300' || true"])
    assert bytes(processes.stdout).strip() == b"0"


async def test_command_that_never_ends_times_out(client: Client, sandbox: str) -> None:
    result = await client.run(sandbox, ["sleep", "4321"], timeout={"seconds": 1})
    assert result.finished is not None
    assert result.finished.state == pb.Execution.STATE_TIMED_OUT
    processes = await client.run(sandbox, ["sh", "-c", "ps -eo args | grep -c '^sleep 4321' || true"])
    assert bytes(processes.stdout).strip() == b"0"


async def test_keepalives_flow_during_silence(client: Client, sandbox: str) -> None:
    # The stack sends a keepalive after 1 s of silence.
    result = await client.run(sandbox, ["sh", "-c", "sleep 3.5; echo done"])
    assert result.keepalives >= 2
    assert bytes(result.stdout) == b"done\n"


async def _read_until_output(stream: AsyncIterator[pb.ExecutionEvent]) -> Collected:
    collected = Collected()
    async for event in stream:
        collected.add(event)
        if collected.stdout:
            return collected
    raise AssertionError("stream ended before any output")
