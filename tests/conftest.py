"""Fixtures: a real Docker engine, the sandbox base image, and real server processes on loopback."""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker
import docker.errors
import pytest

from orchestrator.local_stack import LocalStack
from tests.client import Client
from tests.git_server import GitServer
from tests.harness import HARNESSES, OWNER_LABEL, ProviderHarness, selected_providers

BASE_IMAGE = "sandbox-base:bookworm-2"
STALE_TEST_CONTAINER_SECONDS = 3 * 3600
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
def owner(docker_client: docker.DockerClient) -> str:
    """A label value unique to this test session, so tests see only their own containers. Containers of
    earlier sessions that were killed mid-run (so never cleaned up) are removed once they are old enough not
    to belong to a session still running."""
    cutoff = time.time() - STALE_TEST_CONTAINER_SECONDS
    for container in docker_client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        created = datetime.fromisoformat(container.attrs["Created"][:19]).replace(tzinfo=UTC).timestamp()
        if container.labels.get(OWNER_LABEL, "").startswith("tests-") and created < cutoff:
            container.remove(force=True)
    return f"tests-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def harnesses(
    docker_client: docker.DockerClient, owner: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], ProviderHarness]]:
    """Provider harnesses, each started on first use and stopped at the end of the session."""
    started: dict[str, ProviderHarness] = {}

    def get(name: str) -> ProviderHarness:
        if name not in started:
            harness = HARNESSES[name](owner, tmp_path_factory.mktemp(f"harness-{name}"), docker_client)
            harness.start()
            started[name] = harness
        return started[name]

    yield get
    for harness in started.values():
        harness.stop()


@pytest.fixture(scope="session", params=selected_providers())
def harness(request: pytest.FixtureRequest, harnesses: Callable[[str], ProviderHarness]) -> ProviderHarness:
    """The provider under test: tests that use it (or stack/client/sandbox) run once per provider."""
    return harnesses(request.param)


@pytest.fixture(scope="session")
def make_stack(
    harnesses: Callable[[str], ProviderHarness], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LocalStack]]:
    """Starts LocalStacks for a provider (Docker unless given; stopped at the end of the session, or earlier
    by the test)."""
    stacks: list[LocalStack] = []

    def make(
        harness: ProviderHarness | None = None,
        providers: int = 1,
        orchestrators: int = 1,
        extra_tokens: dict[str, str] | None = None,
        **provider_env: str,
    ) -> LocalStack:
        harness = harness or harnesses("docker")
        env = {
            **harness.provider_env(),
            "SANDBOX_STREAM_KEEPALIVE_SECONDS": "1",
            "SANDBOX_DRAIN_SECONDS": "20",
            # The test git server speaks plain HTTP on loopback.
            "SANDBOX_GIT_ALLOW_HTTP": "true",
            **provider_env,
        }
        log_dir = tmp_path_factory.mktemp(f"stack-{harness.name}")
        stack = LocalStack(
            providers,
            orchestrators,
            provider_module=harness.module,
            provider_name=harness.name,
            provider_env=env,
            log_dir=Path(log_dir),
            extra_tokens=extra_tokens or {},
        )
        stacks.append(stack.start())
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="session")
def shared_stacks(make_stack: Callable[..., LocalStack]) -> Callable[[ProviderHarness], LocalStack]:
    """One long-lived stack per provider: two provider replicas behind two orchestrator replicas."""
    stacks: dict[str, LocalStack] = {}

    def get(harness: ProviderHarness) -> LocalStack:
        if harness.name not in stacks:
            tokens = {OTHER_TENANT_TOKEN: "other-tenant"}
            stacks[harness.name] = make_stack(harness, providers=2, orchestrators=2, extra_tokens=tokens)
        return stacks[harness.name]

    return get


@pytest.fixture(scope="session")
def stack(harness: ProviderHarness, shared_stacks: Callable[[ProviderHarness], LocalStack]) -> LocalStack:
    """The shared stack of the provider under test."""
    return shared_stacks(harness)


@pytest.fixture(scope="session")
def docker_stack(
    harnesses: Callable[[str], ProviderHarness], shared_stacks: Callable[[ProviderHarness], LocalStack]
) -> LocalStack:
    """The shared Docker stack, for tests about Docker-only features."""
    return shared_stacks(harnesses("docker"))


@pytest.fixture
async def client(stack: LocalStack, harness: ProviderHarness) -> AsyncIterator[Client]:
    c = Client(stack.address, stack.client_token, provider=harness.name, spec=harness.sandbox_spec())
    yield c
    await c.close()


@pytest.fixture
async def docker_rpc(docker_stack: LocalStack) -> AsyncIterator[Client]:
    """A client of the Docker stack."""
    c = Client(docker_stack.address, docker_stack.client_token)
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
    # An emulator may still be removing a sandbox that ended (its expiry runs on a thread): give removals in
    # flight a moment before calling anything a leak.
    for _ in range(20):
        leftovers = docker_client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner}"})
        if not leftovers or all(c.status != "removing" for c in leftovers):
            break
        time.sleep(0.25)
    leaked = []
    for container in leftovers:
        try:
            container.remove(force=True)
            leaked.append(container.name)
        except docker.errors.NotFound:
            pass  # removed meanwhile by its owner
        except docker.errors.APIError as err:
            if err.status_code != 409:  # 409: a removal already in progress
                raise
    assert not leaked, f"test leaked containers: {leaked}"


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
