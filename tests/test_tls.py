"""TLS and mutual TLS on both hops: client -> orchestrator and orchestrator -> provider, with real certificates."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from orchestrator.local_stack import ServerProcess
from sandbox.v1 import sandbox_pb2 as pb
from sandbox.v1 import sandbox_pb2_grpc

TOKEN = "tls-test-client-token-0123456789"
PROVIDER_TOKEN = "tls-test-provider-token-012345678"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        (d / f"{name}.ext").write_text(extension + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.crt"),
        )
    return d


@pytest.fixture(scope="module")
def tls_stack(pki: Path, owner: str) -> Iterator[str]:
    """A provider requiring mTLS from the orchestrator, and an orchestrator requiring mTLS from clients."""
    server = {
        "SANDBOX_TLS_CERT_FILE": str(pki / "server.crt"),
        "SANDBOX_TLS_KEY_FILE": str(pki / "server.key"),
        "SANDBOX_TLS_CLIENT_CA_FILE": str(pki / "ca.crt"),
        "SANDBOX_PROVIDER_TOKEN": PROVIDER_TOKEN,
    }
    provider = ServerProcess("provider_docker", {**server, "SANDBOX_DOCKER_OWNER": owner}).start()
    orchestrator = ServerProcess(
        "orchestrator",
        {
            **server,
            "SANDBOX_PROVIDERS": f"docker={provider.address}",
            "SANDBOX_TENANT_TOKENS": f"{TOKEN}=tls",
            "SANDBOX_PROVIDER_TLS_CA_FILE": str(pki / "ca.crt"),
            "SANDBOX_PROVIDER_TLS_CERT_FILE": str(pki / "client.crt"),
            "SANDBOX_PROVIDER_TLS_KEY_FILE": str(pki / "client.key"),
        },
    ).start()
    yield orchestrator.address
    orchestrator.stop()
    provider.stop()


async def list_providers(address: str, credentials: grpc.ChannelCredentials) -> pb.ListProvidersResponse:
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = sandbox_pb2_grpc.SandboxProviderStub(channel)
        return await stub.ListProviders(
            pb.ListProvidersRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10
        )


async def test_mutual_tls_on_both_hops(tls_stack: str, pki: Path) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.crt").read_bytes(),
    )
    reply = await list_providers(tls_stack, credentials)
    # "ready" means the orchestrator reached the provider's health service over mTLS as well.
    assert [(p.name, p.ready) for p in reply.providers] == [("docker", True)]


async def test_a_client_without_a_certificate_is_refused(tls_stack: str, pki: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await list_providers(tls_stack, grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes()))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
