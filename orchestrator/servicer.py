"""The orchestrator's SandboxProvider: authenticates the client, then forwards each call to the provider
named in the request, with the caller's tenant, the remaining deadline and the client's metadata."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from orchestrator.router import Router
from provider_kit.auth import TENANT_HEADER, TenantTokens
from provider_kit.errors import ApiError, deadline_exceeded, error_info, stream_errors, unary_errors, unavailable
from provider_kit.names import parse_execution_name, parse_parent, parse_sandbox_name
from provider_kit.telemetry import tracing_enabled
from sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# Metadata that is the orchestrator's to set, never the client's to pass through. Trace headers are
# re-issued by the tracing interceptor when tracing is on, and passed through untouched when it is off.
_NOT_FORWARDED = {"authorization", TENANT_HEADER, "user-agent"}
_TRACE_HEADERS = {"traceparent", "tracestate", "baggage"}


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
    async def ListProviders(
        self, request: sandbox_pb2.ListProvidersRequest, context: Context
    ) -> sandbox_pb2.ListProvidersResponse:
        self._tokens.tenant_of(context)
        statuses = await asyncio.gather(*(p.status() for p in self._router.providers.values()))
        return sandbox_pb2.ListProvidersResponse(providers=statuses)
