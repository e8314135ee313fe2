"""API errors: a gRPC status code plus a stable machine-readable reason (google.rpc.ErrorInfo).

Only ApiError messages reach clients. Any other exception becomes INTERNAL with a generic message and a
reference id that points to the full traceback in the server's log.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "sandbox.platform"
log = logging.getLogger(__name__)
# A status travels in HTTP/2 trailers, which clients cap (grpcio: 8 KiB by default, and a status over the cap
# reaches the client as RESOURCE_EXHAUSTED): a message or metadata value echoing a long input is cut.
MAX_MESSAGE_CHARS = 1000
MAX_METADATA_CHARS = 200


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class ApiError(Exception):
    """An error meant for the client: its message must be safe to show (no secrets, no internals)."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata

    def to_status(self) -> grpc.Status:
        metadata = {key: _bounded(value, MAX_METADATA_CHARS) for key, value in self.metadata.items()}
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        message = _bounded(self.message, MAX_MESSAGE_CHARS)
        status = status_pb2.Status(code=self.code.value[0], message=message, details=[detail])
        result: grpc.Status = rpc_status.to_status(status)
        return result


def _factory(code: grpc.StatusCode) -> Callable[..., ApiError]:
    def make(reason: str, message: str, **metadata: str) -> ApiError:
        return ApiError(code, reason, message, **metadata)

    return make


invalid_argument = _factory(grpc.StatusCode.INVALID_ARGUMENT)
not_found = _factory(grpc.StatusCode.NOT_FOUND)
already_exists = _factory(grpc.StatusCode.ALREADY_EXISTS)
failed_precondition = _factory(grpc.StatusCode.FAILED_PRECONDITION)
unavailable = _factory(grpc.StatusCode.UNAVAILABLE)
resource_exhausted = _factory(grpc.StatusCode.RESOURCE_EXHAUSTED)
unauthenticated = _factory(grpc.StatusCode.UNAUTHENTICATED)
deadline_exceeded = _factory(grpc.StatusCode.DEADLINE_EXCEEDED)
internal = _factory(grpc.StatusCode.INTERNAL)
# State read back from a sandbox that is damaged or forged (the sandbox's code can write it).
data_loss = _factory(grpc.StatusCode.DATA_LOSS)


class Backend:
    """The errors every provider reports alike about its backend (the Docker engine, E2B, Daytona, Vercel): one
    reason per kind of failure whatever the provider, so clients in any language match one set; the message
    names the backend for the people reading it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def auth_failed(self) -> ApiError:
        # The operator's credential for the backend, not the client's own: UNAUTHENTICATED would tell the
        # client to fix its token.
        return failed_precondition(
            "PROVIDER_AUTH_FAILED", f"{self.name} rejected this provider's credentials; the operator must fix them"
        )

    def rate_limited(self) -> ApiError:
        return resource_exhausted("PROVIDER_RATE_LIMITED", f"{self.name} is rate limiting this provider; back off")

    def rejected(self, subject: str) -> ApiError:
        return invalid_argument("PROVIDER_REJECTED", f"{self.name} rejected the request for {subject}")

    def unavailable(self, what: str = "is not reachable or failed") -> ApiError:
        return unavailable("PROVIDER_UNAVAILABLE", f"{self.name} {what}; retry later")

    def by_status(self, status: int, subject: str) -> ApiError:
        """The error for an HTTP status the backend answered about subject."""
        if status in (401, 403):
            return self.auth_failed()
        if status == 404:
            return not_found("SANDBOX_NOT_FOUND", f"{subject} does not exist")
        if status == 409:
            return failed_precondition("SANDBOX_CONFLICT", f"{subject} is busy or in another state; retry later")
        if status == 429:
            return self.rate_limited()
        if 400 <= status < 500:
            return self.rejected(subject)
        return self.unavailable("failed")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if the server sent one."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: ApiError) -> None:
    await context.abort_with_status(error.to_status())


def _internal(exc: BaseException, method: str) -> ApiError:
    ref = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (ref %s)", method, ref, exc_info=exc)
    return internal("INTERNAL", f"internal error (reference {ref})", reference=ref)


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def unary_errors(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Turns ApiError into its status and any other exception into an opaque INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await method(self, request, context)
        except ApiError as err:
            await abort(context, err)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, _internal(exc, method.__name__))
        raise AssertionError("unreachable: abort raises")

    return wrapper


def stream_errors(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """The same as unary_errors, for server-streaming methods."""

    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except ApiError as err:
            await abort(context, err)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, _internal(exc, method.__name__))

    return wrapper
