"""python -m provider_docker: serves SandboxProvider backed by a Docker engine."""

from __future__ import annotations

from provider_docker.driver import DockerDriver
from provider_docker.settings import DockerSettings
from provider_kit.server import run_provider


def main() -> None:
    run_provider(DockerSettings, DockerDriver)


if __name__ == "__main__":
    main()
