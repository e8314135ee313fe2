"""What operators rely on: health, reflection, drain on SIGTERM, the reaper, UNAVAILABLE when a dependency is
down, and one trace from the orchestrator to the provider."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import docker
import docker.errors
import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from orchestrator.local_stack import LocalStack, ServerProcess
from provider_kit.errors import error_info
from provider_kit.server import SERVICE_NAME
from sandbox.v1 import sandbox_pb2 as pb
from tests import docker_only
from tests.client import Client, Collected, expect_error

# These tests run once, on Docker, not on every provider.
stack, client = docker_only.stack, docker_only.client


async def _health(address: str, service: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return int(reply.status)


async def test_health_and_provider_view(stack: LocalStack, client: Client) -> None:
    for process in [*stack.provider_processes, *stack.orchestrator_processes]:
        assert await _health(process.address, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    view = await client.stub.ListProviders(pb.ListProvidersRequest(), metadata=client.metadata)
    assert [(p.name, p.ready) for p in view.providers] == [("docker", True)]


def test_reflection_lists_the_service(stack: LocalStack) -> None:
    for process in (stack.provider_processes[0], stack.orchestrator_processes[0]):
        with grpc.insecure_channel(process.address) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert SERVICE_NAME in services
        assert "grpc.health.v1.Health" in services


async def test_provider_down_is_unavailable(make_stack: Callable[..., LocalStack]) -> None:
    stack = make_stack()
    stack.provider_processes[0].stop()
    client = Client(stack.address, stack.client_token)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.create()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(err.value)
        assert info is not None and info.reason == "PROVIDER_UNAVAILABLE"
        view = await client.stub.ListProviders(pb.ListProvidersRequest(), metadata=client.metadata)
        assert [(p.name, p.ready) for p in view.providers] == [("docker", False)]
    finally:
        await client.close()


async def test_engine_down_is_unavailable_and_not_ready(make_stack: Callable[..., LocalStack], tmp_path: Path) -> None:
    stack = make_stack(DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    client = Client(stack.address, stack.client_token)
    try:
        assert await _health(stack.provider_processes[0].address, SERVICE_NAME) == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # The same reason as every other provider's backend, and no internals (the socket path) in the message.
        err = await expect_error(client.create(), grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
        assert err.details() == "the Docker engine is not reachable or failed; retry later"
    finally:
        await client.close()


async def test_sigterm_drains_an_in_flight_stream(make_stack: Callable[..., LocalStack]) -> None:
    stack = make_stack()
    client = Client(stack.address, stack.client_token)
    sandbox = (await client.create()).name
    provider = stack.provider_processes[0]
    try:
        collected = Collected()
        stream = client.run_stream(sandbox, ["sh", "-c", "echo begin; sleep 2; echo end"])
        async for event in stream:
            collected.add(event)
            if collected.stdout:
                provider.signal(signal.SIGTERM)
                break
        async for event in stream:
            collected.add(event)
        assert bytes(collected.stdout) == b"begin\nend\n"
        assert collected.finished is not None and collected.finished.state == pb.Execution.STATE_SUCCEEDED
        assert await asyncio.to_thread(provider.wait, 20) == 0
    finally:
        # The provider is gone; a fresh one cleans up the sandbox.
        other = make_stack()
        cleaner = Client(other.address, other.client_token)
        await cleaner.delete(sandbox)
        await cleaner.close()
        await client.close()


async def test_reaper_deletes_expired_sandboxes(
    make_stack: Callable[..., LocalStack], docker_client: docker.DockerClient
) -> None:
    stack = make_stack(SANDBOX_REAP_INTERVAL_SECONDS="0.5")
    client = Client(stack.address, stack.client_token)
    try:
        created = await client.create(spec=pb.SandboxSpec(network_mode="none", ttl=duration_pb2.Duration(seconds=1)))
        native_id = created.name.rsplit("/", 1)[1]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                docker_client.containers.get(native_id)
            except docker.errors.NotFound:
                return
            await asyncio.sleep(0.25)
        pytest.fail("the expired sandbox was not reaped")
    finally:
        await client.close()


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, bytes]] = []  # (service, span name, trace id)

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: object) -> object:
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span.name, span.trace_id) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def otlp_collector() -> Iterator[tuple[str, _Collector]]:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", collector
    server.stop(0)


async def test_one_trace_spans_orchestrator_and_provider(
    make_stack: Callable[..., LocalStack], otlp_collector: tuple[str, _Collector]
) -> None:
    endpoint, collector = otlp_collector
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    stack = make_stack(**otel)
    # Restart the orchestrator with the exporter too (make_stack's env reaches the providers only).
    orchestrator = ServerProcess("orchestrator", {**stack.orchestrator_processes[0].env, **otel}).start()
    client = Client(orchestrator.address, stack.client_token)
    try:
        await client.stub.ListSandboxes(pb.ListSandboxesRequest(parent="providers/docker"), metadata=client.metadata)
    finally:
        await client.close()
        orchestrator.stop()  # flushes its spans
    stack.stop()
    method = "/sandbox.v1.SandboxProvider/ListSandboxes"
    traces = {service: trace_id for service, name, trace_id in collector.spans if name == method}
    assert set(traces) == {"orchestrator", "provider_docker"}, collector.spans
    assert traces["orchestrator"] == traces["provider_docker"]


async def test_provider_accepts_every_token_of_a_rotation(owner: str) -> None:
    old, new, wrong = (secrets.token_urlsafe(24) for _ in range(3))
    provider = ServerProcess(
        "provider_docker", {"SANDBOX_PROVIDER_TOKEN": f"{new},{old}", "SANDBOX_DOCKER_OWNER": owner}
    ).start()
    try:
        for token, expected in (
            (old, grpc.StatusCode.OK),
            (new, grpc.StatusCode.OK),
            (wrong, grpc.StatusCode.UNAUTHENTICATED),
        ):
            direct = Client(provider.address, token, extra_metadata=(("x-sandbox-tenant", "t"),))
            try:
                await direct.stub.ListSandboxes(
                    pb.ListSandboxesRequest(parent="providers/docker"), metadata=direct.metadata
                )
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            finally:
                await direct.close()
            assert code == expected
    finally:
        provider.stop()


def test_bad_settings_are_named_and_never_echoed() -> None:
    secret = "short-secret"
    for module, env in (
        ("provider_docker", {"SANDBOX_PROVIDER_TOKEN": secret}),
        ("orchestrator", {"SANDBOX_PROVIDER_TOKEN": secret, "SANDBOX_PROVIDERS": "docker=127.0.0.1:1"}),
    ):
        result = subprocess.run(
            [sys.executable, "-m", module], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2
        assert "SANDBOX_PROVIDER_TOKEN" in result.stderr
        assert secret not in result.stderr + result.stdout
