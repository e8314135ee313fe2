"""The aio gRPC server every process runs: health, reflection, keepalive, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from provider_kit.driver import Driver
from provider_kit.logs import setup_logging, stop_logging
from provider_kit.protocol import MalformedRequests
from provider_kit.servicer import ProviderServicer
from provider_kit.settings import ProviderSettings, ServerSettings
from provider_kit.telemetry import server_interceptors, setup_telemetry, shutdown_telemetry
from provider_kit.watchdog import Watchdog
from sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

log = logging.getLogger(__name__)
P = TypeVar("P", bound=ProviderSettings)

#: The named health service: SERVING only while the server can do its job (its backend answers).
SERVICE_NAME: str = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxProvider"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
READINESS_INTERVAL_SECONDS = 5.0


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        # grpcio enables SO_REUSEPORT by default, which lets two servers bind one port without an error.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Connections are recycled so that new replicas behind a Service get their share of clients.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * 1000)),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


class WatchedHealth(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health has no types
    """The health service, reading the watchdog on every Check of the named service: the status the server
    last set may predate a stall it has only just come out of (the loop is answering this Check before the
    watchdog's heartbeat had its turn to trigger a new set)."""

    def __init__(self, watchdog: Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if request.service == SERVICE_NAME and not self._watchdog.healthy:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return response


def _bind(server: grpc.aio.Server, settings: ServerSettings) -> int:
    if settings.tls_cert_file and settings.tls_key_file:
        ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
        return server.add_secure_port(settings.listen, credentials)
    return server.add_insecure_port(settings.listen)


async def serve(
    *,
    name: str,
    settings: ServerSettings,
    add_services: Callable[[grpc.aio.Server], None],
    ready: Callable[[], Awaitable[bool]],
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Runs a server until SIGTERM/SIGINT, then drains: health turns NOT_SERVING, new calls are refused,
    in-flight calls get settings.drain_seconds to finish."""
    setup_logging(settings.log_level)
    try:
        await _serve(name, settings, add_services, ready, background, on_stop)
    finally:
        # Last, whatever happened: writes out the queued log lines (a failure's above all).
        stop_logging()


async def _serve(
    name: str,
    settings: ServerSettings,
    add_services: Callable[[grpc.aio.Server], None],
    ready: Callable[[], Awaitable[bool]],
    background: Callable[[], Coroutine[Any, Any, None]] | None,
    on_stop: Callable[[], Awaitable[None]] | None,
) -> None:
    setup_telemetry(name)
    # MalformedRequests first: a body that does not parse must be refused before anything else looks at it.
    server = grpc.aio.server(
        interceptors=[MalformedRequests(), *server_interceptors()], options=server_options(settings)
    )
    add_services(server)
    # Set when the readiness to report may have changed: a stop, or the watchdog's verdict flipping.
    recheck = asyncio.Event()
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(
        loop,
        stall_seconds=settings.watchdog_stall_seconds,
        hold_seconds=settings.watchdog_hold_seconds,
        on_change=lambda healthy: recheck.set(),
    )
    health_servicer = WatchedHealth(watchdog)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = _bind(server, settings)
    await server.start()
    host = settings.listen.rsplit(":", 1)[0]
    # The first line on stdout tells scripts and tests where the server listens (the port may be 0).
    print(json.dumps({"event": "listening", "service": name, "address": f"{host}:{port}"}), flush=True)
    log.info("listening", extra={"service": name, "address": f"{host}:{port}"})

    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        recheck.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    watchdog.start()

    async def track_readiness() -> None:
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        while not stopping.is_set():
            recheck.clear()
            try:
                # Bounded: a backend that stops answering (all its threads stuck) is not ready, not a check
                # that never ends while health keeps saying SERVING.
                is_ready = await asyncio.wait_for(ready(), READINESS_INTERVAL_SECONDS)
            except TimeoutError:
                log.warning("readiness check did not answer in time")
                is_ready = False
            except Exception:
                log.exception("readiness check failed")
                is_ready = False
            # A server whose loop stalled lately is not ready either, whatever its backend says.
            is_ready = is_ready and watchdog.healthy
            status = health_pb2.HealthCheckResponse.SERVING if is_ready else health_pb2.HealthCheckResponse.NOT_SERVING
            await health_servicer.set(SERVICE_NAME, status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recheck.wait(), READINESS_INTERVAL_SECONDS)

    tasks = [asyncio.create_task(track_readiness())]
    if background is not None:
        tasks.append(asyncio.create_task(background()))
    await stopping.wait()
    log.info("draining", extra={"grace_seconds": settings.drain_seconds})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.drain_seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if on_stop is not None:
        await on_stop()
    watchdog.stop()
    shutdown_telemetry()
    log.info("stopped")


async def serve_provider(driver: Driver, settings: ProviderSettings) -> None:
    """Serves SandboxProvider for one driver, with its reaper deleting expired sandboxes."""

    async def reap_forever() -> None:
        while True:
            try:
                count = await driver.reap_expired(datetime.now(UTC))
                if count:
                    log.info("reaped expired sandboxes", extra={"count": count})
            except Exception:
                log.exception("reaper failed")
            await asyncio.sleep(settings.reap_interval_seconds)

    servicer = ProviderServicer(driver, settings)
    await serve(
        name=f"provider_{driver.name}",
        settings=settings,
        add_services=lambda server: sandbox_pb2_grpc.add_SandboxProviderServicer_to_server(servicer, server),
        ready=driver.ready,
        background=reap_forever,
        on_stop=servicer.close,
    )


def run_provider(settings_class: type[P], make_driver: Callable[[P], Driver]) -> None:
    """The body of every provider's `python -m provider_<name>`: settings from the environment (a clear error
    and exit code 2 when they are wrong), then serve until SIGTERM."""
    try:
        settings = settings_class()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as err:
        exit_on_bad_settings(err)
        return
    asyncio.run(serve_provider(make_driver(settings), settings))


def exit_on_bad_settings(error: Exception) -> None:
    """Settings errors name the variable to fix; print them plainly (never the offending value, which may be
    a secret) and exit non-zero."""
    if isinstance(error, ValidationError):
        problems = [
            f"SANDBOX_{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg']}"
            for e in error.errors(include_url=False, include_context=False, include_input=False)
        ]
        message = "; ".join(problems)
    else:
        message = str(error)
    print(f"configuration error: {message}", file=sys.stderr)
    raise SystemExit(2)
