"""The Daytona provider in the shared suite: the real SDK against the local emulator of Daytona's API."""

from __future__ import annotations

from tests.emulators.daytona.emulator import DOMAIN, DaytonaEmulator
from tests.harness import ProviderHarness


class DaytonaHarness(ProviderHarness):
    name = "daytona"
    module = "provider_daytona"

    def start(self) -> None:
        self.emulator = DaytonaEmulator(self.owner, self.docker)
        self.emulator.start()

    def stop(self) -> None:
        self.emulator.stop()

    def provider_env(self) -> dict[str, str]:
        return {
            "DAYTONA_API_KEY": self.emulator.api_key,
            "DAYTONA_API_URL": self.emulator.api_url,
            "DAYTONA_TARGET": "us",
            "SANDBOX_DAYTONA_OWNER": self.owner,
        }

    def edge(self) -> tuple[str, str] | None:
        return DOMAIN, f"http://127.0.0.1:{self.emulator.port}"
