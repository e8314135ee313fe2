"""spec.ports: a server in the sandbox is reachable at the URL in Sandbox.endpoints."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import grpc
import pytest

from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fetch(url: str) -> bytes:
    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  (a loopback URL from the platform)
            return bytes(response.read())

    for _ in range(50):
        try:
            return await asyncio.to_thread(get)
        except OSError:
            await asyncio.sleep(0.2)
    return await asyncio.to_thread(get)


# Host networking only: test sandboxes keep their traffic on loopback (bridge-mode publishing is untested).
@pytest.mark.parametrize("network_mode", ["host"])
async def test_server_in_the_sandbox_is_reachable_at_its_endpoint(docker_rpc: Client, network_mode: str) -> None:
    port = free_port()
    created = await docker_rpc.create(spec=pb.SandboxSpec(network_mode=network_mode, ports=[port]))
    try:
        assert [e.port for e in created.endpoints] == [port]
        assert (await docker_rpc.get(created.name)).endpoints == created.endpoints
        await docker_rpc.write_file(created.name, "/srv/hello.txt", b"hello from the sandbox\n")
        serve = f"cd /srv && nohup python3 -m http.server {port} >/dev/null 2>&1 &"
        await docker_rpc.run(created.name, ["sh", "-c", serve])
        assert await fetch(created.endpoints[0].url + "/hello.txt") == b"hello from the sandbox\n"
    finally:
        await docker_rpc.delete(created.name)


@pytest.mark.parametrize(
    "ports", [[0], [70000], [8080, 8080], list(range(8000, 8009))], ids=["zero", "too-big", "twice", "too-many"]
)
async def test_bad_ports_are_invalid(docker_rpc: Client, ports: list[int]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await docker_rpc.create(spec=pb.SandboxSpec(network_mode="host", ports=ports))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_ports_without_a_network_are_refused(docker_rpc: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await docker_rpc.create(spec=pb.SandboxSpec(network_mode="none", ports=[8080]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
