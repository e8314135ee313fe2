"""Maps Daytona SDK and transport exceptions to API errors with safe messages (the SDK's messages may carry
URLs and server internals, so none of them reach clients)."""

from __future__ import annotations

import aiohttp
from daytona import (
    DaytonaAuthenticationError,
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaForbiddenError,
    DaytonaNotFoundError,
    DaytonaRateLimitError,
    DaytonaTimeoutError,
)

from provider_kit.errors import ApiError, Backend, failed_precondition, not_found

DAYTONA = Backend("Daytona")


def map_daytona_error(exc: BaseException, subject: str) -> ApiError | None:
    """The API error for a failed Daytona call about `subject`, or None for an unexpected exception (which
    the kit reports as INTERNAL, logging the traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DaytonaNotFoundError):
        return not_found("SANDBOX_NOT_FOUND", f"{subject} does not exist")
    if isinstance(exc, DaytonaAuthenticationError | DaytonaForbiddenError):
        return DAYTONA.auth_failed()
    if isinstance(exc, DaytonaRateLimitError):
        return DAYTONA.rate_limited()
    if isinstance(exc, DaytonaConflictError):
        return failed_precondition("SANDBOX_CONFLICT", f"{subject} is busy or in the wrong state; retry later")
    if isinstance(exc, DaytonaTimeoutError | DaytonaConnectionError):
        return DAYTONA.unavailable("did not answer in time")
    if isinstance(exc, DaytonaBadRequestError):
        return DAYTONA.rejected(subject)
    if isinstance(exc, DaytonaError):
        status = exc.status_code
        if status is not None and 400 <= status < 500:
            return DAYTONA.by_status(status, subject)
        # 5xx, and transport failures that the SDK surfaces as a plain DaytonaError without a status.
        return DAYTONA.unavailable()
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        return DAYTONA.unavailable("is not reachable")
    return None
