"""The Docker driver's run_with_stdin (WriteFile's one-round-trip path) on a real engine.

A command may exit before reading all its input (WriteFile refusing to write over a directory), or write
while it still reads (cat). Neither may leave the caller waiting for the other side: an earlier version sent
all input before reading any output and hung until the socket timed out, which the client saw as "the Docker
engine is not reachable".
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from provider_docker.driver import DockerDriver
from provider_docker.settings import DockerSettings
from tests.conftest import BASE_IMAGE
from tests.harness import OWNER_LABEL

INPUT = os.urandom(5 << 20)  # far more than the engine and the kernel buffer between them
# Each call takes well under a second; the driver's own socket timeout (120 s) is what a hang would reach.
CALL_SECONDS = 30


@pytest.fixture
def container(docker_client: docker.DockerClient, owner: str) -> Iterator[str]:
    # Named like the driver's own sandboxes: it addresses containers by nothing else.
    name = f"sbx-{secrets.token_hex(10)}"
    started = docker_client.containers.run(
        BASE_IMAGE, ["sleep", "600"], name=name, detach=True, network_mode="none", labels={OWNER_LABEL: owner}
    )
    yield name
    started.remove(force=True)


@pytest.fixture
async def driver() -> AsyncIterator[DockerDriver]:
    opened = DockerDriver(DockerSettings(provider_token=secrets.token_urlsafe(24)))
    yield opened
    await opened.close()


async def test_a_command_that_echoes_its_input_gets_all_of_it_back(driver: DockerDriver, container: str) -> None:
    for _ in range(3):
        result = await asyncio.wait_for(driver.run_with_stdin(container, ["cat"], INPUT), CALL_SECONDS)
        assert (result.code, result.stdout == INPUT, result.stderr) == (0, True, b"")


async def test_a_command_that_exits_without_reading_everything_returns_its_exit_code(
    driver: DockerDriver, container: str
) -> None:
    for _ in range(10):  # the race between its exit and the sender is what used to hang: try it often
        result = await asyncio.wait_for(
            driver.run_with_stdin(container, ["sh", "-c", "head -c 1000; echo refused >&2; exit 68"], INPUT),
            CALL_SECONDS,
        )
        assert (result.code, result.stdout, result.stderr) == (68, INPUT[:1000], b"refused\n")
