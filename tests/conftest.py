"""Fixtures: a real Docker engine, the sandbox base image, and real server processes on loopback."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from orchestrator.local_stack import LocalStack
from tests.client import Client
from tests.git_server import GitServer

BASE_IMAGE = "sandbox-base:bookworm-2"
OWNER_LABEL = "sandbox.platform/managed-by"
# A second tenant's client token on the shared stack.
OTHER_TENANT_TOKEN = secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        pytest.fail(
            f"no Docker engine answers ({err}); these tests need one: install docker.io and start dockerd "
            "(.ci/run does both)",
            pytrace=False,
        )
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {BASE_IMAGE} is missing: run scripts/build-base-image.sh", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def owner() -> str:
    """A label value unique to this test session, so tests see only their own containers."""
    return f"tests-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def make_stack(
    docker_client: docker.DockerClient, owner: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LocalStack]]:
    """Starts LocalStacks (stopped at the end of the session, or earlier by the test)."""
    stacks: list[LocalStack] = []

    def make(
        providers: int = 1, orchestrators: int = 1, extra_tokens: dict[str, str] | None = None, **provider_env: str
    ) -> LocalStack:
        env = {
            "SANDBOX_DOCKER_OWNER": owner,
            "SANDBOX_DOCKER_NETWORK_MODES": "host,none",
            "SANDBOX_STREAM_KEEPALIVE_SECONDS": "1",
            "SANDBOX_DRAIN_SECONDS": "20",
            # The test git server speaks plain HTTP on loopback.
            "SANDBOX_GIT_ALLOW_HTTP": "true",
            **provider_env,
        }
        log_dir = tmp_path_factory.mktemp("stack")
        stack = LocalStack(
            providers, orchestrators, provider_env=env, log_dir=Path(log_dir), extra_tokens=extra_tokens or {}
        )
        stacks.append(stack.start())
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="session")
def stack(make_stack: Callable[..., LocalStack]) -> LocalStack:
    """The shared stack: two Docker provider replicas behind two orchestrator replicas."""
    return make_stack(providers=2, orchestrators=2, extra_tokens={OTHER_TENANT_TOKEN: "other-tenant"})


@pytest.fixture
async def client(stack: LocalStack) -> AsyncIterator[Client]:
    c = Client(stack.address, stack.client_token)
    yield c
    await c.close()


@pytest.fixture
async def sandbox(client: Client) -> AsyncIterator[str]:
    created = await client.create()
    yield created.name
    await client.delete(created.name)


@pytest.fixture(autouse=True)
def no_leaked_containers(docker_client: docker.DockerClient, owner: str) -> Iterator[None]:
    """Every test must leave no sandbox container behind."""
    yield
    leftovers = docker_client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner}"})
    for container in leftovers:
        container.remove(force=True)
    assert not leftovers, f"test leaked containers: {[c.name for c in leftovers]}"


@pytest.fixture(scope="session")
def git_server() -> Iterator[GitServer]:
    """A real git smart-HTTP server on loopback, with token auth (sandboxes reach it via host networking)."""
    with GitServer() as server:
        yield server


@pytest.fixture(scope="session")
def agent_image(docker_client: docker.DockerClient) -> str:
    """The agent image's tag; built (idempotently, from the npm registry) when missing."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "build-agent-image.sh"
    tag = subprocess.run([script, "--print-tag"], check=True, capture_output=True, text=True).stdout.strip()
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        built = subprocess.run([script], capture_output=True, text=True, timeout=1200)
        if built.returncode != 0:
            pytest.fail(f"{script} failed:\n{built.stdout}\n{built.stderr}", pytrace=False)
    return tag
