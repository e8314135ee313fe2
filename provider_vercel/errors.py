"""Maps vercel.sandbox and transport exceptions to API errors with safe messages."""

from __future__ import annotations

import httpx2
from vercel.sandbox import (
    SandboxApiError,
    SandboxCredentialsError,
    SandboxError,
    SandboxResponseError,
    SandboxStreamError,
    SandboxTerminalStateError,
    SandboxTimeoutError,
)

from provider_kit.errors import (
    ApiError,
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
    unavailable,
)

# In-band stream codes (vercel/sandbox/_internal/recovery.py) that mean the sandbox is no longer running.
_STOPPED_CODES = {"sandbox_stopped", "sandbox_stopping"}


def provider_auth_failed() -> ApiError:
    # Not UNAUTHENTICATED: that would tell the client its own credential is wrong.
    return failed_precondition(
        "PROVIDER_AUTH_FAILED", "Vercel rejected this provider's credentials; the operator must fix them"
    )


def map_vercel_error(exc: BaseException, subject: str) -> ApiError | None:
    """The API error for a failed SDK call about `subject`, or None for an unexpected exception (which the
    kit then reports as INTERNAL, logging the traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SandboxApiError):
        status = exc.status_code
        if status in (401, 403):
            return provider_auth_failed()
        if status == 404:
            return not_found("SANDBOX_NOT_FOUND", f"{subject} does not exist")
        if status == 410 or exc.code in _STOPPED_CODES:
            return failed_precondition("SANDBOX_NOT_RUNNING", f"{subject} is stopped")
        if status == 429:
            return resource_exhausted("VERCEL_RATE_LIMITED", "Vercel is rate limiting this provider; back off")
        if status == 409:
            return failed_precondition("SANDBOX_CONFLICT", f"{subject} is busy or in another state; retry later")
        if 400 <= status < 500:
            return invalid_argument("VERCEL_REJECTED", f"Vercel rejected the request for {subject}")
        return unavailable("VERCEL_UNAVAILABLE", "Vercel failed; retry later")
    if isinstance(exc, SandboxCredentialsError):
        return provider_auth_failed()
    if isinstance(exc, SandboxStreamError):
        if exc.code in _STOPPED_CODES:
            return failed_precondition("SANDBOX_NOT_RUNNING", f"{subject} stopped")
        return unavailable("STREAM_INTERRUPTED", f"the stream from {subject} broke; retry or re-attach")
    if isinstance(exc, SandboxTerminalStateError):
        return unavailable("SANDBOX_FAILED", f"{subject} failed to start; retry")
    if isinstance(exc, SandboxTimeoutError | SandboxResponseError | SandboxError):
        return unavailable("VERCEL_UNAVAILABLE", "Vercel answered unexpectedly; retry later")
    if isinstance(exc, httpx2.HTTPError | OSError):
        return unavailable("VERCEL_UNAVAILABLE", "Vercel is not reachable; retry later")
    return None
