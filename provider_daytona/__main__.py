"""python -m provider_daytona: serves SandboxProvider backed by Daytona's API."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from provider_daytona.driver import DaytonaDriver
from provider_daytona.settings import DaytonaSettings
from provider_kit.server import exit_on_bad_settings, serve_provider


def main() -> None:
    try:
        settings = DaytonaSettings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as err:
        exit_on_bad_settings(err)
        return
    asyncio.run(serve_provider(DaytonaDriver(settings), settings))


if __name__ == "__main__":
    main()
