"""Requests to a sandbox's endpoints from outside it, as a client of the platform makes them."""

from __future__ import annotations

import asyncio
import http.client
import urllib.parse

from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client
from tests.harness import ProviderHarness


async def get(
    harness: ProviderHarness, endpoint: pb.Endpoint, path: str, headers: dict[str, str], *, attempts: int = 50
) -> tuple[int, bytes]:
    """GETs path under the endpoint's URL (the emulators' edge proxies speak plain HTTP: TLS is not emulated);
    while nothing answers or the edge finds nothing listening (502), tries again, up to attempts times."""
    url = urllib.parse.urlsplit(endpoint.url)
    host, port = harness.connect_to(endpoint.url)

    def once() -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(host, port, timeout=5)
        try:
            connection.request("GET", url.path.rstrip("/") + path, headers={"Host": url.netloc, **headers})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    status, body = 0, b""
    for attempt in range(attempts):
        try:
            status, body = await asyncio.to_thread(once)
        except OSError:
            status = 0
        if status not in (0, 502) or attempt == attempts - 1:
            break
        await asyncio.sleep(0.2)
    return status, body


async def create_with_ports(client: Client, ports: list[int], **kwargs: object) -> pb.Sandbox:
    """A sandbox of the client's usual spec that also serves ports."""
    spec = pb.SandboxSpec()
    spec.CopyFrom(client.spec)
    spec.ports.extend(ports)
    return await client.create(spec=spec, **kwargs)
