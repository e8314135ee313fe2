"""python -m provider_vercel: serves SandboxProvider backed by Vercel Sandbox."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from provider_kit.server import exit_on_bad_settings, serve_provider
from provider_vercel.driver import VercelDriver
from provider_vercel.settings import VercelSettings


def main() -> None:
    try:
        settings = VercelSettings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as err:
        exit_on_bad_settings(err)
        return
    asyncio.run(serve_provider(VercelDriver(settings), settings))


if __name__ == "__main__":
    main()
