"""Maps docker-py and transport exceptions to API errors with safe messages."""

from __future__ import annotations

import docker.errors
import requests

from provider_kit.errors import ApiError, Backend, not_found

ENGINE = Backend("the Docker engine")


def map_docker_error(exc: BaseException, subject: str) -> ApiError | None:
    """The API error for a failed engine call about `subject`, or None for an unexpected exception (which
    the kit then reports as INTERNAL, logging the traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, docker.errors.NotFound):
        return not_found("SANDBOX_NOT_FOUND", f"{subject} does not exist")
    if isinstance(exc, docker.errors.APIError) and exc.status_code is not None:
        return ENGINE.by_status(exc.status_code, subject)
    if isinstance(exc, requests.exceptions.RequestException | docker.errors.DockerException | OSError):
        return ENGINE.unavailable()
    return None
