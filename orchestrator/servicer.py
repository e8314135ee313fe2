"""The orchestrator's SandboxProvider: authenticates the client, then forwards each call to the provider
named in the request, with the caller's tenant, the remaining deadline and the client's metadata."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from orchestrator.router import Router
from provider_kit.auth import TENANT_HEADER, TenantTokens
from provider_kit.errors import (
    ApiError,
    deadline_exceeded,
    error_info,
    invalid_argument,
    stream_errors,
    unary_errors,
    unavailable,
)
from provider_kit.names import parse_execution_name, parse_parent, parse_sandbox_name
from provider_kit.telemetry import tracing_enabled
from sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# Metadata that is the orchestrator's to set, never the client's to pass through. Trace headers are
# re-issued by the tracing interceptor when tracing is on, and passed through untouched when it is off.
_NOT_FORWARDED = {"authorization", TENANT_HEADER, "user-agent"}
_TRACE_HEADERS = {"traceparent", "tracestate", "baggage"}
MAX_BATCH_TASKS = 1000
DEFAULT_BATCH_CONCURRENCY = 4


def _provider_error(err: grpc.aio.AioRpcError, provider: str) -> ApiError:
    """The provider's own error passes through unchanged; a transport failure becomes UNAVAILABLE."""
    info = error_info(err)
    if info is not None:
        return ApiError(err.code(), info.reason, err.details() or "", **dict(info.metadata))
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return deadline_exceeded("DEADLINE_EXCEEDED", f"provider {provider} did not answer before the deadline")
    return unavailable("PROVIDER_UNAVAILABLE", f"provider {provider} is unavailable; retry later", provider=provider)


class OrchestratorServicer(sandbox_pb2_grpc.SandboxProviderServicer):
    def __init__(self, router: Router, tokens: TenantTokens, provider_token: str) -> None:
        self._router = router
        self._tokens = tokens
        self._provider_token = provider_token
        self._not_forwarded = _NOT_FORWARDED | (_TRACE_HEADERS if tracing_enabled() else set())

    def _metadata(self, context: Context) -> list[tuple[str, str | bytes]]:
        tenant = self._tokens.tenant_of(context)
        forwarded = [
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if key not in self._not_forwarded and not key.startswith((":", "grpc-"))
        ]
        return [
            *forwarded,
            ("authorization", f"Bearer {self._provider_token}"),
            (TENANT_HEADER, tenant),
        ]

    async def _unary(self, provider: str, method: str, request: Any, context: Context) -> Any:
        metadata = self._metadata(context)
        stub = self._router.get(provider).stub
        try:
            return await getattr(stub, method)(request, metadata=metadata, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as err:
            raise _provider_error(err, provider) from None

    async def _stream(self, provider: str, method: str, request: Any, context: Context) -> AsyncIterator[Any]:
        metadata = self._metadata(context)
        stub = self._router.get(provider).stub
        call = getattr(stub, method)(request, metadata=metadata, timeout=context.time_remaining())
        try:
            # Each event is read from the provider only after the previous one was sent on to the client,
            # so a slow client slows the provider's stream down instead of filling memory.
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as err:
            raise _provider_error(err, provider) from None
        finally:
            call.cancel()

    @unary_errors
    async def CreateSandbox(self, request: sandbox_pb2.CreateSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        result: sandbox_pb2.Sandbox = await self._unary(request.provider, "CreateSandbox", request, context)
        return result

    @unary_errors
    async def GetSandbox(self, request: sandbox_pb2.GetSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        provider = parse_sandbox_name(request.name).provider
        result: sandbox_pb2.Sandbox = await self._unary(provider, "GetSandbox", request, context)
        return result

    @unary_errors
    async def ListSandboxes(
        self, request: sandbox_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_pb2.ListSandboxesResponse:
        provider = parse_parent(request.parent)
        result: sandbox_pb2.ListSandboxesResponse = await self._unary(provider, "ListSandboxes", request, context)
        return result

    @unary_errors
    async def DeleteSandbox(
        self, request: sandbox_pb2.DeleteSandboxRequest, context: Context
    ) -> sandbox_pb2.DeleteSandboxResponse:
        provider = parse_sandbox_name(request.name).provider
        result: sandbox_pb2.DeleteSandboxResponse = await self._unary(provider, "DeleteSandbox", request, context)
        return result

    @stream_errors
    async def RunCommand(
        self, request: sandbox_pb2.RunCommandRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        provider = parse_sandbox_name(request.sandbox, "sandbox").provider
        async for event in self._stream(provider, "RunCommand", request, context):
            yield event

    @stream_errors
    async def AttachExecution(
        self, request: sandbox_pb2.AttachExecutionRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        provider = parse_execution_name(request.name).sandbox.provider
        async for event in self._stream(provider, "AttachExecution", request, context):
            yield event

    @unary_errors
    async def GetExecution(self, request: sandbox_pb2.GetExecutionRequest, context: Context) -> sandbox_pb2.Execution:
        provider = parse_execution_name(request.name).sandbox.provider
        result: sandbox_pb2.Execution = await self._unary(provider, "GetExecution", request, context)
        return result

    @unary_errors
    async def CancelExecution(
        self, request: sandbox_pb2.CancelExecutionRequest, context: Context
    ) -> sandbox_pb2.Execution:
        provider = parse_execution_name(request.name).sandbox.provider
        result: sandbox_pb2.Execution = await self._unary(provider, "CancelExecution", request, context)
        return result

    @unary_errors
    async def WriteFile(self, request: sandbox_pb2.WriteFileRequest, context: Context) -> sandbox_pb2.WriteFileResponse:
        provider = parse_sandbox_name(request.sandbox, "sandbox").provider
        result: sandbox_pb2.WriteFileResponse = await self._unary(provider, "WriteFile", request, context)
        return result

    @stream_errors
    async def ReadFile(
        self, request: sandbox_pb2.ReadFileRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.ReadFileResponse]:
        provider = parse_sandbox_name(request.sandbox, "sandbox").provider
        async for chunk in self._stream(provider, "ReadFile", request, context):
            yield chunk

    @stream_errors
    async def ExecuteAgent(
        self, request: sandbox_pb2.ExecuteAgentRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        provider = parse_sandbox_name(request.sandbox, "sandbox").provider
        async for event in self._stream(provider, "ExecuteAgent", request, context):
            yield event

    @unary_errors
    async def PushChanges(
        self, request: sandbox_pb2.PushChangesRequest, context: Context
    ) -> sandbox_pb2.PushChangesResponse:
        provider = parse_sandbox_name(request.sandbox, "sandbox").provider
        result: sandbox_pb2.PushChangesResponse = await self._unary(provider, "PushChanges", request, context)
        return result

    @stream_errors
    async def RunTask(
        self, request: sandbox_pb2.RunTaskRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.TaskEvent]:
        async for event in self._stream(request.provider, "RunTask", request, context):
            yield event

    @stream_errors
    async def AttachTask(
        self, request: sandbox_pb2.AttachTaskRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.TaskEvent]:
        provider = parse_sandbox_name(request.name).provider
        async for event in self._stream(provider, "AttachTask", request, context):
            yield event

    @stream_errors
    async def RunTasks(
        self, request: sandbox_pb2.RunTasksRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.RunTasksEvent]:
        """Fans the tasks out to their providers, at most max_concurrency at once, and streams each task's
        progress (not its raw output: attach to a task for that)."""
        self._tokens.tenant_of(context)
        if not request.tasks or len(request.tasks) > MAX_BATCH_TASKS:
            raise invalid_argument("INVALID_FIELD", f"tasks must hold 1 to {MAX_BATCH_TASKS} tasks", field="tasks")
        if request.max_concurrency < 0:
            raise invalid_argument("INVALID_FIELD", "max_concurrency must not be negative", field="max_concurrency")
        for task in request.tasks:
            self._router.get(task.provider)
        limit = asyncio.Semaphore(request.max_concurrency or DEFAULT_BATCH_CONCURRENCY)
        events: asyncio.Queue[sandbox_pb2.RunTasksEvent | None] = asyncio.Queue()

        async def run_one(index: int, task: sandbox_pb2.RunTaskRequest) -> None:
            async with limit:
                try:
                    async for event in self._stream(task.provider, "RunTask", task, context):
                        if event.WhichOneof("event") == "task":
                            events.put_nowait(sandbox_pb2.RunTasksEvent(index=index, task=event.task))
                except ApiError as err:
                    events.put_nowait(sandbox_pb2.RunTasksEvent(index=index, error=f"{err.code.name}: {err.message}"))

        async def run_all() -> None:
            await asyncio.gather(*(run_one(i, task) for i, task in enumerate(request.tasks)))
            events.put_nowait(None)

        runner = asyncio.create_task(run_all())
        try:
            while (event := await events.get()) is not None:
                yield event
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    @unary_errors
    async def ListProviders(
        self, request: sandbox_pb2.ListProvidersRequest, context: Context
    ) -> sandbox_pb2.ListProvidersResponse:
        self._tokens.tenant_of(context)
        statuses = await asyncio.gather(*(p.status() for p in self._router.providers.values()))
        return sandbox_pb2.ListProvidersResponse(providers=statuses)
