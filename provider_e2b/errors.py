"""Maps E2B SDK and transport exceptions to API errors with safe messages.

The SDK's own exception types (e2b/exceptions.py) already tell the cases apart: the control plane's HTTP
status becomes AuthenticationException (401), RateLimitException (429), ServiceBusyException (503),
SandboxNotFoundException (404) or SandboxException with .status_code; envd answers become Connect codes, and
a 502 "... was not found" from E2B's edge (the sandbox is gone) becomes SandboxNotRunningException.
"""

from __future__ import annotations

import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.exceptions import (
    AuthenticationException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotRunningException,
    ServiceBusyException,
    TemplateException,
    TimeoutException,
)
from pyqwest import ReadError, StreamError, WriteError

from provider_kit.errors import ApiError, Backend, failed_precondition, not_found, resource_exhausted

E2B = Backend("E2B")


def _by_status(status: int, subject: str) -> ApiError:
    if status == 507:
        return resource_exhausted("SANDBOX_DISK_FULL", f"{subject} has no space left")
    return E2B.by_status(status, subject)


_CONNECT_CODES = {
    Code.NOT_FOUND: 404,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 409,
    Code.ALREADY_EXISTS: 409,
}


def map_e2b_error(exc: BaseException, subject: str) -> ApiError | None:
    """The API error for a failed E2B call about `subject`, or None for an unexpected exception (which the
    kit then reports as INTERNAL, logging the traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthenticationException):
        return E2B.auth_failed()
    if isinstance(exc, RateLimitException):
        return E2B.rate_limited()
    if isinstance(exc, ServiceBusyException):
        return E2B.unavailable()
    # A sandbox that is gone: the API's 404, or the edge's "was not found" for its envd.
    if isinstance(exc, NotFoundException | SandboxNotRunningException):
        return not_found("SANDBOX_NOT_FOUND", f"{subject} does not exist")
    if isinstance(exc, NotEnoughSpaceException):
        return resource_exhausted("SANDBOX_DISK_FULL", f"{subject} has no space left")
    if isinstance(exc, InvalidArgumentException):
        return E2B.rejected(subject)
    if isinstance(exc, TemplateException):
        return failed_precondition("TEMPLATE_UNSUPPORTED", f"the template of {subject} is too old for this SDK")
    # SandboxUnreachableException and other TimeoutExceptions: the sandbox may be fine; try again.
    if isinstance(exc, TimeoutException):
        return E2B.unavailable()
    if isinstance(exc, SandboxException):
        return _by_status(exc.status_code, subject) if exc.status_code else E2B.unavailable()
    if isinstance(exc, ConnectError):
        status = _CONNECT_CODES.get(exc.code)
        return _by_status(status, subject) if status else E2B.unavailable()
    # Transport failures: connection refused or reset, a stream cut mid-way, client-side timeouts.
    if isinstance(exc, httpx.TransportError | OSError | ReadError | WriteError | StreamError):
        return E2B.unavailable()
    return None
