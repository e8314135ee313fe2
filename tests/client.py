"""A small test client that talks to the platform the way a user's service does: over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

import grpc
import pytest

from provider_kit.errors import error_info
from sandbox.v1 import sandbox_pb2 as pb
from sandbox.v1 import sandbox_pb2_grpc

STDOUT = pb.OutputChunk.STREAM_STDOUT
STDERR = pb.OutputChunk.STREAM_STDERR


async def expect_error(call: Awaitable[object], code: grpc.StatusCode, reason: str = "") -> grpc.aio.AioRpcError:
    """Awaits call, which must fail with code and, when given, the ErrorInfo reason; a traceback must never
    reach the client. Returns the error for further checks."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    err = raised.value
    assert err.code() == code, err.details()
    if reason:
        info = error_info(err)
        assert info is not None and info.reason == reason, info
    assert "Traceback" not in (err.details() or "")
    return err


@dataclass
class Collected:
    """Everything one execution stream delivered."""

    name: str = ""
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    keepalives: int = 0
    finished: pb.Execution | None = None
    events: int = 0
    agent_events: list[pb.AgentEvent] = field(default_factory=list)

    def add(self, event: pb.ExecutionEvent) -> None:
        self.events += 1
        kind = event.WhichOneof("event")
        if kind == "started":
            self.name = event.started.name
        elif kind == "output":
            target = self.stdout if event.output.stream == STDOUT else self.stderr
            # Offsets must continue exactly where the previous chunk ended: no gap, no overlap.
            assert event.output.offset == len(target), (event.output.offset, len(target))
            target.extend(event.output.data)
        elif kind == "keepalive":
            self.keepalives += 1
        elif kind == "finished":
            self.finished = event.finished
        elif kind == "agent":
            self.agent_events.append(event.agent)


class Client:
    def __init__(
        self,
        address: str,
        token: str,
        extra_metadata: tuple[tuple[str, str], ...] = (),
        *,
        provider: str = "docker",
        spec: pb.SandboxSpec | None = None,
    ) -> None:
        self.provider = provider
        # What sandboxes are created with unless a test says otherwise (host networking reaches loopback).
        self.spec = spec or pb.SandboxSpec(network_mode="host")
        self.channel = grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 32 << 20)])
        self.stub = sandbox_pb2_grpc.SandboxProviderStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"), *extra_metadata)

    async def close(self) -> None:
        await self.channel.close()

    async def create(self, provider: str = "", **kwargs: object) -> pb.Sandbox:
        spec = kwargs.pop("spec", None) or self.spec
        request = pb.CreateSandboxRequest(provider=provider or self.provider, spec=spec, **kwargs)  # type: ignore[arg-type]
        return await self.stub.CreateSandbox(request, metadata=self.metadata)

    async def delete(self, name: str) -> None:
        await self.stub.DeleteSandbox(pb.DeleteSandboxRequest(name=name), metadata=self.metadata)

    async def get(self, name: str) -> pb.Sandbox:
        return await self.stub.GetSandbox(pb.GetSandboxRequest(name=name), metadata=self.metadata)

    def run_stream(self, sandbox: str, argv: list[str], **kwargs: object) -> AsyncIterator[pb.ExecutionEvent]:
        request = pb.RunCommandRequest(sandbox=sandbox, argv=argv, **kwargs)  # type: ignore[arg-type]
        return self.stub.RunCommand(request, metadata=self.metadata)

    async def run(self, sandbox: str, argv: list[str], **kwargs: object) -> Collected:
        collected = Collected()
        async for event in self.run_stream(sandbox, argv, **kwargs):
            collected.add(event)
        return collected

    def attach_stream(self, name: str, collected: Collected) -> AsyncIterator[pb.ExecutionEvent]:
        request = pb.AttachExecutionRequest(
            name=name, stdout_offset=len(collected.stdout), stderr_offset=len(collected.stderr)
        )
        return self.stub.AttachExecution(request, metadata=self.metadata)

    async def write_file(self, sandbox: str, path: str, content: bytes, mode: int = 0) -> pb.WriteFileResponse:
        request = pb.WriteFileRequest(sandbox=sandbox, path=path, content=content, mode=mode)
        return await self.stub.WriteFile(request, metadata=self.metadata)

    async def read_file(self, sandbox: str, path: str) -> list[pb.ReadFileResponse]:
        call = self.stub.ReadFile(pb.ReadFileRequest(sandbox=sandbox, path=path), metadata=self.metadata)
        return [chunk async for chunk in call]

    async def run_agent(self, sandbox: str, agent: str, instruction: str, **kwargs: object) -> Collected:
        request = pb.ExecuteAgentRequest(sandbox=sandbox, agent=agent, instruction=instruction, **kwargs)  # type: ignore[arg-type]
        collected = Collected()
        async for event in self.stub.ExecuteAgent(request, metadata=self.metadata):
            collected.add(event)
        return collected

    async def attach(self, name: str, collected: Collected) -> Collected:
        """Continues `collected` from where it stopped."""
        async for event in self.attach_stream(name, collected):
            collected.add(event)
        return collected
