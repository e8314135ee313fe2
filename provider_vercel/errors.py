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

from provider_kit.errors import ApiError, Backend, failed_precondition, unavailable

VERCEL = Backend("Vercel")
# In-band stream codes (vercel/sandbox/_internal/recovery.py) that mean the sandbox is no longer running.
_STOPPED_CODES = {"sandbox_stopped", "sandbox_stopping"}


def map_vercel_error(exc: BaseException, subject: str) -> ApiError | None:
    """The API error for a failed SDK call about `subject`, or None for an unexpected exception (which the
    kit then reports as INTERNAL, logging the traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SandboxApiError):
        if exc.status_code == 410 or exc.code in _STOPPED_CODES:
            return failed_precondition("SANDBOX_NOT_RUNNING", f"{subject} is stopped")
        return VERCEL.by_status(exc.status_code, subject)
    if isinstance(exc, SandboxCredentialsError):
        return VERCEL.auth_failed()
    if isinstance(exc, SandboxStreamError):
        if exc.code in _STOPPED_CODES:
            return failed_precondition("SANDBOX_NOT_RUNNING", f"{subject} stopped")
        return unavailable("STREAM_INTERRUPTED", f"the stream from {subject} broke; retry or re-attach")
    if isinstance(exc, SandboxTerminalStateError):
        return unavailable("SANDBOX_FAILED", f"{subject} failed to start; retry")
    if isinstance(exc, SandboxTimeoutError | SandboxResponseError | SandboxError):
        return VERCEL.unavailable("answered unexpectedly")
    if isinstance(exc, httpx2.HTTPError | OSError):
        return VERCEL.unavailable("is not reachable")
    return None
