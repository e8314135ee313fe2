"""python -m provider_vercel: serves SandboxProvider backed by Vercel Sandbox."""

from __future__ import annotations

from provider_kit.server import run_provider
from provider_vercel.driver import VercelDriver
from provider_vercel.settings import VercelSettings


def main() -> None:
    run_provider(VercelSettings, VercelDriver)


if __name__ == "__main__":
    main()
