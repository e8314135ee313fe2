"""Malformed requests: a body that is not the method's request message is INVALID_ARGUMENT, on every service.

grpcio runs a method's request deserializer (the generated `X.FromString`) before any servicer code; when it
raises, grpcio answers UNKNOWN with the exception's class and text. This interceptor, the first of every
server, gives each handler a deserializer that returns a marker instead of raising, and a behaviour that turns
the marker into INVALID_ARGUMENT (reason MALFORMED_REQUEST) before the servicer, the other interceptors or any
credential check see it. Being an interceptor, it covers every service of the server (SandboxProvider, health,
reflection) and every kind of method, whatever registered them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool

from provider_kit.errors import ApiError, abort, invalid_argument


class _Malformed:
    """What a safe deserializer returns for bytes that do not parse."""


MALFORMED = _Malformed()


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, and whatever else a parser of hostile bytes raises
            return MALFORMED

    return parse


@functools.lru_cache(maxsize=256)
def malformed_error(method: str) -> ApiError:
    """The error for a body that is not a valid request of method ('/package.Service/Method')."""
    try:
        full_name = method.lstrip("/").replace("/", ".")
        kind = f"a valid {descriptor_pool.Default().FindMethodByName(full_name).input_type.full_name} message"
    except KeyError:
        kind = "a valid request message for this method"
    return invalid_argument("MALFORMED_REQUEST", f"the request is not {kind}")


Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # grpcio's class is generic only in its type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]


async def _reject(context: Context, method: str) -> None:
    await abort(context, malformed_error(method))


def _checked_iterator(requests: AsyncIterator[Any], context: Context, method: str) -> AsyncIterator[Any]:
    async def checked() -> AsyncIterator[Any]:
        async for request in requests:
            if request is MALFORMED:
                await _reject(context, method)
            yield request

    return checked()


def _wrap_unary_request(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            if request is MALFORMED:
                await _reject(context, method)
            async for response in behavior(request, context):
                yield response

        return stream

    async def unary(request: Any, context: Context) -> Any:
        if request is MALFORMED:
            await _reject(context, method)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return unary


def _wrap_stream_request(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async for response in behavior(_checked_iterator(requests, context, method), context):
                yield response

        return stream

    async def unary(requests: AsyncIterator[Any], context: Context) -> Any:
        result = behavior(_checked_iterator(requests, context, method), context)
        return await result if inspect.isawaitable(result) else result

    return unary


def guard(handler: Handler, method: str) -> Handler:
    """The handler with a deserializer that cannot raise and a behaviour that rejects what it could not parse."""
    replace: Callable[..., Handler] = handler._replace  # type: ignore[attr-defined]
    safe = _safe(handler.request_deserializer)
    if handler.unary_unary is not None:
        return replace(request_deserializer=safe, unary_unary=_wrap_unary_request(handler.unary_unary, method))
    if handler.unary_stream is not None:
        return replace(request_deserializer=safe, unary_stream=_wrap_unary_request(handler.unary_stream, method))
    if handler.stream_unary is not None:
        return replace(request_deserializer=safe, stream_unary=_wrap_stream_request(handler.stream_unary, method))
    if handler.stream_stream is not None:
        return replace(request_deserializer=safe, stream_stream=_wrap_stream_request(handler.stream_stream, method))
    return handler


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Put first in a server's interceptors: see the module's docstring."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return guard(handler, handler_call_details.method)
