"""Two tenants on one stack, every RPC: tenant B aims each call at tenant A's sandbox, A's execution, A's
execution id under B's own sandbox, and A's request id. Nothing B receives holds a byte of A's output or
files, and nothing B does changes A's sandbox."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client
from tests.conftest import OTHER_TENANT_TOKEN


async def _received(call: Awaitable[Any] | AsyncIterator[Any]) -> bytes:
    """Everything a call delivered to the caller: its messages and, when it failed, its status text."""
    got = bytearray()
    try:
        if hasattr(call, "__aiter__"):
            async for message in call:
                got += message.SerializeToString()
        else:
            got += (await call).SerializeToString()
    except grpc.aio.AioRpcError as err:
        assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), err.details()
        got += (err.details() or "").encode() + err.debug_error_string().encode()
    return bytes(got)


def _attempts(
    b: Client, a_sandbox: str, a_execution: str, b_sandbox: str, a_request_id: str
) -> dict[str, Callable[[], Any]]:
    stub, md = b.stub, b.metadata
    a_exec_in_b = f"{b_sandbox}/executions/{a_execution.rsplit('/', 1)[1]}"
    attempts: dict[str, Callable[[], Any]] = {
        "CreateSandbox same request_id": lambda: stub.CreateSandbox(
            pb.CreateSandboxRequest(provider="docker", request_id=a_request_id, spec=b.spec), metadata=md
        ),
        "GetSandbox": lambda: stub.GetSandbox(pb.GetSandboxRequest(name=a_sandbox), metadata=md),
        "ListSandboxes": lambda: stub.ListSandboxes(pb.ListSandboxesRequest(parent="providers/docker"), metadata=md),
        "DeleteSandbox": lambda: stub.DeleteSandbox(pb.DeleteSandboxRequest(name=a_sandbox), metadata=md),
        "RunCommand": lambda: stub.RunCommand(
            pb.RunCommandRequest(sandbox=a_sandbox, argv=["cat", "/tmp/secret-a"]), metadata=md
        ),
        "ReadFile": lambda: stub.ReadFile(pb.ReadFileRequest(sandbox=a_sandbox, path="/tmp/secret-a"), metadata=md),
        "WriteFile": lambda: stub.WriteFile(
            pb.WriteFileRequest(sandbox=a_sandbox, path="/tmp/intruder", content=b"x"), metadata=md
        ),
        "ExecuteAgent": lambda: stub.ExecuteAgent(
            pb.ExecuteAgentRequest(sandbox=a_sandbox, agent="shell", instruction="touch /tmp/intruder"), metadata=md
        ),
        "PushChanges": lambda: stub.PushChanges(pb.PushChangesRequest(sandbox=a_sandbox), metadata=md),
        "AttachTask": lambda: stub.AttachTask(pb.AttachTaskRequest(name=a_sandbox), metadata=md),
        "ListProviders": lambda: stub.ListProviders(pb.ListProvidersRequest(), metadata=md),
    }
    for label, execution in (("A's", a_execution), ("A's id under B's sandbox", a_exec_in_b)):
        attempts[f"AttachExecution {label}"] = lambda e=execution: stub.AttachExecution(
            pb.AttachExecutionRequest(name=e), metadata=md
        )
        attempts[f"GetExecution {label}"] = lambda e=execution: stub.GetExecution(
            pb.GetExecutionRequest(name=e), metadata=md
        )
        attempts[f"CancelExecution {label}"] = lambda e=execution: stub.CancelExecution(
            pb.CancelExecutionRequest(name=e), metadata=md
        )
    return attempts


async def test_tenant_b_gets_nothing_of_tenant_a(docker_stack: LocalStack) -> None:
    a = Client(docker_stack.address, docker_stack.client_token)
    b = Client(docker_stack.address, OTHER_TENANT_TOKEN)
    marker = f"tenant-a-{secrets.token_hex(8)}"
    request_id = f"two-tenants-{secrets.token_hex(4)}"
    a_sandbox = (await a.create(request_id=request_id, labels={"team": "a"})).name
    b_sandbox = (await b.create()).name
    b_created: list[str] = []
    try:
        await a.write_file(a_sandbox, "/tmp/secret-a", marker.encode())
        # A long-running execution of A's, so attaching to it would stream live output.
        a_run = a.run_stream(a_sandbox, ["sh", "-c", f"echo {marker}; sleep 30"])
        started = await anext(aiter(a_run))
        a_execution = started.started.name
        received: dict[str, bytes] = {}
        for label, attempt in _attempts(b, a_sandbox, a_execution, b_sandbox, request_id).items():
            received[label] = await _received(attempt())
            if label.startswith("CreateSandbox"):
                b_created.append(pb.Sandbox.FromString(received[label]).name)
        assert b_created[0] and b_created[0] != a_sandbox
        leaked = {label: got for label, got in received.items() if marker.encode() in got or a_sandbox.encode() in got}
        # B's own answers may only ever name B's things.
        assert leaked == {}, sorted(leaked)
        listed = pb.ListSandboxesResponse.FromString(received["ListSandboxes"])
        assert a_sandbox not in [s.name for s in listed.sandboxes]
        # A's sandbox and execution are untouched: still running, its file unchanged, nothing written.
        assert (await a.get(a_sandbox)).state == pb.Sandbox.STATE_RUNNING
        check = await a.run(a_sandbox, ["sh", "-c", "cat /tmp/secret-a; ls /tmp/intruder 2>/dev/null; true"])
        assert bytes(check.stdout) == marker.encode()
        execution = await a.stub.GetExecution(pb.GetExecutionRequest(name=a_execution), metadata=a.metadata)
        assert execution.state == pb.Execution.STATE_RUNNING
        a_run.cancel()
    finally:
        await a.delete(a_sandbox)
        for name in (b_sandbox, *b_created):
            await b.delete(name)
        await a.close()
        await b.close()
