"""Maps docker-py and transport exceptions to API errors with safe messages."""

from __future__ import annotations

import docker.errors
import requests

from provider_kit.errors import (
    ApiError,
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
    unavailable,
)


def map_docker_error(exc: BaseException, subject: str) -> ApiError | None:
    """The API error for a failed engine call about `subject`, or None for an unexpected exception (which
    the kit then reports as INTERNAL, logging the traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, docker.errors.NotFound):
        return not_found("SANDBOX_NOT_FOUND", f"{subject} does not exist")
    if isinstance(exc, docker.errors.APIError) and exc.status_code is not None:
        status = exc.status_code
        if status == 409:
            return failed_precondition("SANDBOX_CONFLICT", f"{subject} is busy or not running; retry later")
        if status == 429:
            return resource_exhausted("DOCKER_RATE_LIMITED", "the Docker engine is overloaded; back off and retry")
        if 400 <= status < 500:
            return invalid_argument("DOCKER_REJECTED", f"the Docker engine rejected the request for {subject}")
        return unavailable("DOCKER_UNAVAILABLE", "the Docker engine failed; retry later")
    if isinstance(exc, requests.exceptions.RequestException | docker.errors.DockerException | OSError):
        return unavailable("DOCKER_UNAVAILABLE", "the Docker engine is not reachable; retry later")
    return None
