"""The Vercel provider in the shared suite: the real `vercel` SDK against the local emulator (server.py)."""

from __future__ import annotations

import secrets

from sandbox.v1 import sandbox_pb2 as pb
from tests.emulators.vercel.server import DOMAIN, Emulator, EmulatorServer
from tests.harness import ProviderHarness

TEAM_ID = "team_emulated"
PROJECT_ID = "prj_emulated"


class VercelHarness(ProviderHarness):
    name = "vercel"
    module = "provider_vercel"

    def start(self) -> None:
        self.token = secrets.token_urlsafe(24)
        self.emulator = Emulator(self.owner, self.docker, self.token, TEAM_ID, PROJECT_ID)
        self.server = EmulatorServer(self.emulator).start()

    def stop(self) -> None:
        self.server.stop()

    def provider_env(self) -> dict[str, str]:
        return {
            "VERCEL_TOKEN": self.token,
            "VERCEL_TEAM_ID": TEAM_ID,
            "VERCEL_PROJECT_ID": PROJECT_ID,
            "SANDBOX_VERCEL_API_URL": self.server.url,
            "SANDBOX_VERCEL_OWNER": self.owner,
            "SANDBOX_VERCEL_DEFAULT_IMAGE": "sandbox-base:bookworm-2",
        }

    def sandbox_spec(self) -> pb.SandboxSpec:
        # Vercel has no network modes: sandboxes get full egress (the emulator uses host networking, so they
        # reach loopback servers); "none" maps to a deny-all network policy.
        return pb.SandboxSpec()

    def edge(self) -> tuple[str, str] | None:
        return DOMAIN, self.server.url
