"""spec.ports on every provider: a server in the sandbox is reachable at the URL in Sandbox.endpoints, with
the headers the endpoint names, and every replica reports the same endpoints."""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Callable

import grpc
import pytest

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests import endpoints
from tests.client import Client, expect_error
from tests.harness import ProviderHarness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_server_in_the_sandbox_is_reachable_at_its_endpoint(client: Client, harness: ProviderHarness) -> None:
    port = free_port()
    created = await endpoints.create_with_ports(client, [port], labels={"serves": "http"})
    try:
        assert [e.port for e in created.endpoints] == [port]
        assert created.endpoints[0].url.startswith(("http://", "https://"))
        # Any replica, any time: read back from the provider, not remembered.
        assert (await client.get(created.name)).endpoints == created.endpoints
        listed = await client.stub.ListSandboxes(
            pb.ListSandboxesRequest(parent=f"providers/{client.provider}", labels={"serves": "http"}),
            metadata=client.metadata,
        )
        assert [(s.name, list(s.endpoints)) for s in listed.sandboxes] == [(created.name, list(created.endpoints))]

        await client.write_file(created.name, "/srv/www/hello.txt", b"hello from the sandbox\n")
        serve = f"cd /srv/www && setsid nohup python3 -m http.server {port} >/dev/null 2>&1 &"
        started = await client.run(created.name, ["sh", "-c", serve])
        assert started.finished is not None and started.finished.exit_code == 0
        endpoint = created.endpoints[0]
        assert await endpoints.get(harness, endpoint, "/hello.txt", dict(endpoint.headers)) == (
            200,
            b"hello from the sandbox\n",
        )
    finally:
        await client.delete(created.name)


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ([0], "from 1 to 65535"),
        ([70000], "from 1 to 65535"),
        ([8080, 8080], "distinct"),
        (list(range(8000, 8009)), "at most 8"),
    ],
    ids=["zero", "too-big", "twice", "too-many"],
)
async def test_bad_ports_are_invalid(client: Client, ports: list[int], message: str) -> None:
    create = endpoints.create_with_ports(client, ports)
    err = await expect_error(create, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert "spec.ports" in (err.details() or "") and message in (err.details() or "")


async def test_ports_without_a_network_are_refused_on_docker(docker_rpc: Client) -> None:
    spec = pb.SandboxSpec(network_mode="none", ports=[8080])
    err = await expect_error(docker_rpc.create(spec=spec), grpc.StatusCode.INVALID_ARGUMENT, "PORTS_NEED_A_NETWORK")
    assert "network_mode none" in (err.details() or "")


async def test_bridge_mode_publishes_each_port_on_loopback(
    make_stack: Callable[..., LocalStack], harnesses: Callable[[str], ProviderHarness]
) -> None:
    # A bridge sandbox has a network namespace of its own; the test only connects into it, through the port
    # the engine publishes on a loopback address, and the server there only answers. Endpoint URLs name the
    # publish address unless told otherwise.
    docker = harnesses("docker")
    stack = make_stack(docker, SANDBOX_DOCKER_NETWORK_MODES="bridge", SANDBOX_DOCKER_PUBLISH_IP="127.0.0.2")
    client = docker.client(stack.address, stack.client_token)
    try:
        created = await client.create(spec=pb.SandboxSpec(network_mode="bridge", ports=[8000]))
        try:
            [endpoint] = created.endpoints
            published = urllib.parse.urlsplit(endpoint.url)
            assert (endpoint.port, published.scheme, published.hostname) == (8000, "http", "127.0.0.2")
            assert (await client.get(created.name)).endpoints == created.endpoints
            await client.write_file(created.name, "/srv/www/hello.txt", b"over the bridge\n")
            serve = "cd /srv/www && setsid nohup python3 -m http.server 8000 >/dev/null 2>&1 &"
            assert (await client.run(created.name, ["sh", "-c", serve])).finished.exit_code == 0
            assert await endpoints.get(docker, endpoint, "/hello.txt", {}) == (200, b"over the bridge\n")
        finally:
            await client.delete(created.name)
    finally:
        await client.close()
        stack.stop()
