"""python -m provider_e2b: serves SandboxProvider backed by E2B."""

from __future__ import annotations

from provider_e2b.driver import E2BDriver
from provider_e2b.settings import E2BSettings
from provider_kit.server import run_provider


def main() -> None:
    run_provider(E2BSettings, E2BDriver)


if __name__ == "__main__":
    main()
