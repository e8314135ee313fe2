"""python -m provider_docker: serves SandboxProvider backed by a Docker engine."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from provider_docker.driver import DockerDriver
from provider_docker.settings import DockerSettings
from provider_kit.server import exit_on_bad_settings, serve_provider


def main() -> None:
    try:
        settings = DockerSettings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as err:
        exit_on_bad_settings(err)
        return
    asyncio.run(serve_provider(DockerDriver(settings), settings))


if __name__ == "__main__":
    main()
