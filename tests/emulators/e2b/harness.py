"""Runs the shared provider suite on E2B: the real SDK in the provider processes, this emulator behind it."""

from __future__ import annotations

from tests.emulators.e2b.emulator import DOMAIN, E2BEmulator
from tests.harness import ProviderHarness

BASE_IMAGE = "sandbox-base:bookworm-2"
#: The template the provider is configured to use, and the image the emulator backs it with.
TEMPLATE = "sandbox-base"


class E2BHarness(ProviderHarness):
    name = "e2b"
    module = "provider_e2b"
    emulator: E2BEmulator

    def start(self) -> None:
        self.emulator = E2BEmulator(self.docker, self.owner, {TEMPLATE: BASE_IMAGE, "base": BASE_IMAGE}).start()

    def stop(self) -> None:
        self.emulator.stop()

    def provider_env(self) -> dict[str, str]:
        return {
            "E2B_API_KEY": self.emulator.api_key,
            "E2B_API_URL": self.emulator.url,
            "E2B_SANDBOX_URL": self.emulator.url,
            # Where sandbox ports are (<port>-<id>.<domain>): the emulator's edge proxy answers for it.
            "E2B_DOMAIN": DOMAIN,
            # The emulator is a plain-HTTP/1.1 server (uvicorn).
            "E2B_HTTP_VERSION": "1.1",
            "SANDBOX_E2B_DEFAULT_TEMPLATE": TEMPLATE,
            "SANDBOX_E2B_OWNER": self.owner,
        }

    def edge(self) -> tuple[str, str] | None:
        return DOMAIN, self.emulator.url
