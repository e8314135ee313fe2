"""How the shared test suite runs each provider: its backend (the real Docker engine, or a local emulator of
a cloud API whose sandboxes are real Docker containers) and the settings of its provider processes.

Every test that takes the `stack`, `client` or `sandbox` fixture runs once per provider harness registered
in HARNESSES (restrict with SANDBOX_TEST_PROVIDERS=docker,e2b). A provider joins the shared suite by adding
its harness here.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import os
import urllib.parse
from pathlib import Path

import docker

from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client

#: Label that every container made for this test session carries (the leak check looks for it).
OWNER_LABEL = "sandbox.platform/managed-by"


class ProviderHarness(abc.ABC):
    #: The provider's name in resource names.
    name: str
    #: The provider process: python -m MODULE.
    module: str

    def __init__(self, owner: str, workdir: Path, docker_client: docker.DockerClient) -> None:
        self.owner = owner
        self.workdir = workdir
        self.docker = docker_client

    def start(self) -> None:  # noqa: B027  (optional hook)
        """Starts the backend (an emulator); called once per session, before any provider process."""

    def stop(self) -> None:  # noqa: B027  (optional hook)
        """Stops the backend."""

    @abc.abstractmethod
    def provider_env(self) -> dict[str, str]:
        """Settings for the provider processes (credentials and URLs of the backend)."""

    def sandbox_spec(self) -> pb.SandboxSpec:
        """The spec tests create sandboxes with: host networking, so sandboxes reach loopback servers."""
        return pb.SandboxSpec(network_mode="host")

    def edge(self) -> tuple[str, str] | None:
        """(domain, emulator URL) when the backend's emulator serves the hosts under domain as the cloud's edge
        proxy serves sandbox ports."""
        return None

    def connect_to(self, url: str) -> tuple[str, int]:
        """The address a test connects to for an endpoint URL (like curl's --connect-to): the emulator for
        hosts under its edge domain, else the URL's own host and port."""
        parts = urllib.parse.urlsplit(url)
        edge = self.edge()
        if edge is not None and (parts.hostname or "").endswith(f".{edge[0]}"):
            parts = urllib.parse.urlsplit(edge[1])
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

    def client(self, address: str, token: str) -> Client:
        """A client of a stack of this provider."""
        return Client(address, token, provider=self.name, spec=self.sandbox_spec())


class DockerHarness(ProviderHarness):
    name = "docker"
    module = "provider_docker"

    def provider_env(self) -> dict[str, str]:
        return {
            "SANDBOX_DOCKER_OWNER": self.owner,
            "SANDBOX_DOCKER_NETWORK_MODES": "host,none",
            # Test sandboxes reach the loopback git servers and model endpoints through host networking; only
            # the tenants of the shared stacks get it (the LocalStack's own and tests/conftest.py's second).
            "SANDBOX_DOCKER_HOST_NETWORK_TENANTS": "local,other-tenant",
        }


# Cloud providers run against local emulators of their APIs; each one's harness lives with its emulator and
# joins the suite as soon as that module exists.
_EMULATED = {
    "e2b": "tests.emulators.e2b.harness:E2BHarness",
    "daytona": "tests.emulators.daytona.harness:DaytonaHarness",
    "vercel": "tests.emulators.vercel.harness:VercelHarness",
}


def _load(path: str) -> type[ProviderHarness] | None:
    module, _, name = path.partition(":")
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    if found is None:
        return None
    harness: type[ProviderHarness] = getattr(importlib.import_module(module), name)
    return harness


HARNESSES: dict[str, type[ProviderHarness]] = {"docker": DockerHarness} | {
    name: harness for name, path in _EMULATED.items() if (harness := _load(path)) is not None
}


def selected_providers() -> list[str]:
    wanted = [p for p in os.environ.get("SANDBOX_TEST_PROVIDERS", "").split(",") if p]
    unknown = set(wanted) - set(HARNESSES)
    if unknown:
        known = ", ".join(sorted(HARNESSES))
        raise ValueError(f"SANDBOX_TEST_PROVIDERS names unknown providers {sorted(unknown)}; known: {known}")
    return wanted or list(HARNESSES)
