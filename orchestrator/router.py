"""One client channel per configured provider; the provider named in a request picks the channel."""

from __future__ import annotations

import json
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.settings import OrchestratorSettings
from provider_kit.errors import invalid_argument
from provider_kit.server import MAX_MESSAGE_BYTES, SERVICE_NAME
from provider_kit.telemetry import client_interceptors
from sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

HEALTH_TIMEOUT_SECONDS = 2.0

# round_robin spreads calls over every address a dns:/// target resolves to (a Kubernetes headless
# Service lists one per pod) instead of pinning all traffic to the first.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_options(settings: OrchestratorSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Re-resolve DNS quickly when pods come and go.
        ("grpc.dns_min_time_between_resolutions_ms", 5_000),
    ]


class Provider:
    def __init__(self, name: str, target: str, settings: OrchestratorSettings) -> None:
        self.name = name
        self.target = target
        options = channel_options(settings)
        interceptors = client_interceptors()
        if settings.provider_tls_ca_file is not None:
            cert, key = settings.provider_tls_cert_file, settings.provider_tls_key_file
            credentials = grpc.ssl_channel_credentials(
                root_certificates=settings.provider_tls_ca_file.read_bytes(),
                private_key=key.read_bytes() if key else None,
                certificate_chain=cert.read_bytes() if cert else None,
            )
            self.channel = grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        self.stub = sandbox_pb2_grpc.SandboxProviderStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def status(self) -> sandbox_pb2.ProviderStatus:
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=HEALTH_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as err:
            # A provider whose event loop is stuck still accepts connections but answers nothing: its check
            # times out. Once its loop runs again, its watchdog keeps it NOT_SERVING for a while.
            what = "not answering" if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "unreachable"
            return sandbox_pb2.ProviderStatus(name=self.name, ready=False, detail=f"{what} ({err.code().name})")
        ready = reply.status == health_pb2.HealthCheckResponse.SERVING
        detail = "" if ready else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return sandbox_pb2.ProviderStatus(name=self.name, ready=ready, detail=detail)


class Router:
    def __init__(self, settings: OrchestratorSettings) -> None:
        self.providers = {
            name: Provider(name, target, settings) for name, target in settings.provider_targets().items()
        }

    def get(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            configured = ", ".join(sorted(self.providers))
            raise invalid_argument(
                "UNKNOWN_PROVIDER", f"provider {name!r} is not configured here; configured providers: {configured}"
            )
        return provider

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.channel.close()
