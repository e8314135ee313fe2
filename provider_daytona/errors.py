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

from provider_kit.errors import (
    ApiError,
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
    unavailable,
)


def map_daytona_error(exc: BaseException, subject: str) -> ApiError | None:
    """The API error for a failed Daytona call about `subject`, or None for an unexpected exception (which
    the kit reports as INTERNAL, logging the traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DaytonaNotFoundError):
        return not_found("SANDBOX_NOT_FOUND", f"{subject} does not exist")
    if isinstance(exc, DaytonaAuthenticationError | DaytonaForbiddenError):
        # The operator's Daytona key, not the client's credential: UNAUTHENTICATED would tell the client to
        # fix its own token.
        return failed_precondition("PROVIDER_AUTH_FAILED", "Daytona refused this provider's API key")
    if isinstance(exc, DaytonaRateLimitError):
        return resource_exhausted("DAYTONA_RATE_LIMITED", "Daytona is rate limiting requests; back off and retry")
    if isinstance(exc, DaytonaConflictError):
        return failed_precondition("SANDBOX_CONFLICT", f"{subject} is busy or in the wrong state; retry later")
    if isinstance(exc, DaytonaTimeoutError | DaytonaConnectionError):
        return unavailable("DAYTONA_UNAVAILABLE", "Daytona did not answer in time; retry later")
    if isinstance(exc, DaytonaBadRequestError):
        return invalid_argument("DAYTONA_REJECTED", f"Daytona rejected the request for {subject}")
    if isinstance(exc, DaytonaError):
        status = exc.status_code
        if status is not None and 400 <= status < 500:
            return invalid_argument("DAYTONA_REJECTED", f"Daytona rejected the request for {subject}")
        # 5xx, and transport failures that the SDK surfaces as a plain DaytonaError without a status.
        return unavailable("DAYTONA_UNAVAILABLE", "Daytona is not reachable or failed; retry later")
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        return unavailable("DAYTONA_UNAVAILABLE", "Daytona is not reachable; retry later")
    return None
