"""python -m provider_e2b: serves SandboxProvider backed by E2B."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from provider_e2b.driver import E2BDriver
from provider_e2b.settings import E2BSettings
from provider_kit.server import exit_on_bad_settings, serve_provider


def main() -> None:
    try:
        settings = E2BSettings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as err:
        exit_on_bad_settings(err)
        return
    asyncio.run(serve_provider(E2BDriver(settings), settings))


if __name__ == "__main__":
    main()
