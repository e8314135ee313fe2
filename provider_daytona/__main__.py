"""python -m provider_daytona: serves SandboxProvider backed by Daytona's API."""

from __future__ import annotations

from provider_daytona.driver import DaytonaDriver
from provider_daytona.settings import DaytonaSettings
from provider_kit.server import run_provider


def main() -> None:
    run_provider(DaytonaSettings, DaytonaDriver)


if __name__ == "__main__":
    main()
