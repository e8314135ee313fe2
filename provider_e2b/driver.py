"""The E2B driver: sandboxes are E2B sandboxes, driven with the async E2B SDK (e2b.AsyncSandbox).

Everything the platform must know about a sandbox is kept in its E2B metadata, so any replica can serve any
sandbox; the only per-replica state is a cache of connected sandboxes (it saves a connect round trip per
command and is rebuilt on demand).

Processes run through envd's process.Process/Start stream on the SDK's own RPC client
(e2b.envd.client_async.create_rpc_client), not commands.run: the command handle decodes output as UTF-8
with errors="replace" (e2b/sandbox_async/commands/command_handle.py), which would corrupt binary output, and
bounds the whole stream by a 60 s timeout unless told otherwise. The raw stream carries the exact bytes, takes
argv as argv (no shell string), and has no overall deadline (timeout_ms=None), so 30-minute runs stream live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import TypeVar

import grpc
from e2b import AsyncSandbox, SandboxQuery
from e2b.api.client_async import get_envd_api
from e2b.connection_config import KEEPALIVE_PING_HEADER, KEEPALIVE_PING_INTERVAL_SEC, ApiParams, ConnectionConfig
from e2b.envd.api import acheck_sandbox_health
from e2b.envd.client_async import as_stream, create_rpc_client
from e2b.envd.process import process_connect, process_pb
from e2b.envd.rpc import ahandle_rpc_exception_with_health
from e2b.envd.utils import authentication_header
from e2b.envd.versions import ENVD_DEFAULT_USER
from e2b.exceptions import SandboxException

from provider_e2b.errors import map_e2b_error
from provider_e2b.settings import E2BSettings
from provider_kit import records
from provider_kit.driver import Driver, Exit, NewSandbox, Output, SandboxRecord
from provider_kit.errors import ApiError, failed_precondition, invalid_argument, not_found, unavailable
from sandbox.v1 import sandbox_pb2

T = TypeVar("T")
CONNECTED_CACHE_SIZE = 256
LIST_PAGE_SIZE = 100
# Processes run as root, like docker exec does; the kit drops to the image's agent user where it matters.
PROCESS_USER = "root"
_FDS = {"stdout": 1, "stderr": 2}


class E2BDriver(Driver):
    name = "e2b"

    def __init__(self, settings: E2BSettings) -> None:
        self._settings = settings
        self._opts = ApiParams(
            api_key=settings.e2b_api_key.get_secret_value(),
            api_url=settings.e2b_api_url,
            sandbox_url=settings.e2b_sandbox_url,
            domain=settings.e2b_domain,
            request_timeout=settings.e2b_request_timeout_seconds,
            retries=settings.e2b_retries,
            http_version=settings.e2b_http_version,
        )
        self._config = ConnectionConfig(**self._opts)
        self._connected: OrderedDict[str, tuple[AsyncSandbox, process_connect.ProcessClient]] = OrderedDict()

    async def _call(self, subject: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as exc:
            mapped = map_e2b_error(exc, subject)
            if mapped is None:
                raise
            raise mapped from exc

    def apply_defaults(self, spec: sandbox_pb2.SandboxSpec, tenant: str) -> sandbox_pb2.SandboxSpec:
        out = sandbox_pb2.SandboxSpec()
        out.CopyFrom(spec)
        out.image = spec.image or self._settings.e2b_default_template
        out.network_mode = spec.network_mode or "host"
        # E2B sizes a sandbox by its template and mounts nothing from a host: refuse what it cannot honour.
        for field, value in (
            ("spec.milli_cpus", spec.milli_cpus),
            ("spec.memory_bytes", spec.memory_bytes),
            ("spec.pids_limit", spec.pids_limit),
            ("spec.mounts", len(spec.mounts)),
        ):
            if value:
                raise invalid_argument(
                    "UNSUPPORTED_FIELD", f"{field} is not supported on E2B (the template sets it)", field=field
                )
        if out.network_mode not in ("host", "bridge", "none"):
            raise invalid_argument(
                "NETWORK_MODE_NOT_ALLOWED", "spec.network_mode must be host, bridge or none", field="spec.network_mode"
            )
        return out

    def _metadata(self, new: NewSandbox) -> dict[str, str]:
        return records.encode(new, self._settings.e2b_owner)

    def _record(self, native_id: str, metadata: dict[str, str], running: bool, domain: str | None) -> SandboxRecord:
        state = sandbox_pb2.Sandbox.STATE_RUNNING if running else sandbox_pb2.Sandbox.STATE_STOPPED
        record = records.decode(native_id, metadata, state)
        # E2B serves every port of a sandbox at a host of its own (the SDK's get_host); nothing to declare.
        scheme = "http" if self._config.debug else "https"
        endpoints = [
            sandbox_pb2.Endpoint(
                port=port, url=f"{scheme}://{self._config.get_host(native_id, domain or self._config.domain, port)}"
            )
            for port in record.spec.ports
        ]
        return dataclasses.replace(record, endpoints=endpoints)

    async def create(self, new: NewSandbox) -> SandboxRecord:
        if new.request_id:
            existing = await self._list({records.TENANT_KEY: new.tenant, records.REQUEST_ID_KEY: new.request_id})
            if existing:
                return min(existing, key=lambda r: r.native_id)
        # The SDK retries 429/5xx answers to create; the idempotency key makes that safe. Derived from tenant
        # and request_id, it also makes concurrent retries through different replicas create one sandbox.
        key = (
            hashlib.sha256(f"{new.tenant}\0{new.request_id}".encode()).hexdigest()[:40]
            if new.request_id
            else uuid.uuid4().hex
        )
        timeout = max(1, math.ceil((new.expire_time - datetime.now(UTC)).total_seconds()))
        metadata = self._metadata(new)
        try:
            sandbox = await AsyncSandbox.create(
                template=new.spec.image,
                timeout=timeout,
                metadata=metadata,
                envs=dict(new.spec.env),
                allow_internet_access=new.spec.network_mode != "none",
                idempotency_key=key,
                **self._opts,
            )
        except SandboxException as exc:
            # The API answers 404 for a template that does not exist (or that this account may not use).
            if exc.status_code == 404:
                raise failed_precondition("IMAGE_NOT_FOUND", f"E2B template {new.spec.image!r} does not exist") from exc
            raise map_e2b_error(exc, "a new sandbox") or exc from exc
        except Exception as exc:
            raise map_e2b_error(exc, "a new sandbox") or exc from exc
        self._remember(sandbox)
        if new.request_id:
            # The idempotency key may have handed back a sandbox that a concurrent request created.
            return await self.get(sandbox.sandbox_id)
        return self._record(sandbox.sandbox_id, metadata, True, sandbox.sandbox_domain)

    async def get(self, native_id: str, *, endpoints: bool = True) -> SandboxRecord:
        info = await self._call(f"sandbox {native_id}", AsyncSandbox.get_info(native_id, **self._opts))
        if info.metadata.get(records.OWNER_KEY) != self._settings.e2b_owner:
            raise not_found("SANDBOX_NOT_FOUND", f"sandbox {native_id} does not exist")
        return self._record(info.sandbox_id, info.metadata, info.state.value == "running", info.sandbox_domain)

    async def _list(self, metadata: dict[str, str]) -> list[SandboxRecord]:
        query = SandboxQuery(metadata={records.OWNER_KEY: self._settings.e2b_owner, **metadata})
        pages = AsyncSandbox.list(query=query, limit=LIST_PAGE_SIZE, **self._opts)
        found: list[SandboxRecord] = []
        while pages.has_next:
            for info in await self._call("sandboxes", pages.next_items()):
                found.append(
                    self._record(info.sandbox_id, info.metadata, info.state.value == "running", info.sandbox_domain)
                )
        return found

    async def list_sandboxes(self, tenant: str, labels: dict[str, str], after: str, limit: int) -> list[SandboxRecord]:
        found = await self._list(
            {records.TENANT_KEY: tenant, **{f"{records.USER_LABEL}{k}": v for k, v in labels.items()}}
        )
        found.sort(key=lambda r: r.native_id)
        return [r for r in found if r.native_id > after][:limit]

    async def delete(self, native_id: str) -> None:
        self._connected.pop(native_id, None)
        # kill() answers False for a sandbox that is already gone: deleting it again succeeds.
        await self._call(f"sandbox {native_id}", AsyncSandbox.kill(native_id, **self._opts))

    async def reap_expired(self, now: datetime) -> int:
        # A sandbox without an expiry was not made by a provider (never guess: leave it alone).
        expired = [r.native_id for r in await self._list({}) if r.expire_time.timestamp() and r.expire_time <= now]
        for native_id in expired:
            await self.delete(native_id)
        return len(expired)

    async def ready(self) -> bool:
        query = SandboxQuery(metadata={records.OWNER_KEY: self._settings.e2b_owner})
        try:
            await AsyncSandbox.list(query=query, limit=1, **self._opts).next_items()
        except Exception:
            return False
        return True

    def _remember(self, sandbox: AsyncSandbox) -> tuple[AsyncSandbox, process_connect.ProcessClient]:
        rpc = create_rpc_client(process_connect.ProcessClient, sandbox.envd_api_url, sandbox.connection_config)
        self._connected[sandbox.sandbox_id] = (sandbox, rpc)
        while len(self._connected) > CONNECTED_CACHE_SIZE:
            self._connected.popitem(last=False)
        return sandbox, rpc

    async def _connect(self, native_id: str) -> tuple[AsyncSandbox, process_connect.ProcessClient]:
        cached = self._connected.get(native_id)
        if cached is not None:
            self._connected.move_to_end(native_id)
            return cached
        # No timeout: connecting must not change the sandbox's lifetime, which follows the requested TTL.
        sandbox = await self._call(f"sandbox {native_id}", AsyncSandbox.connect(native_id, **self._opts))
        return self._remember(sandbox)

    async def upload(self, native_id: str, path: str, content: bytes) -> None:
        sandbox, _ = await self._connect(native_id)
        # As root, like every process the driver starts (PROCESS_USER).
        await self._call(f"sandbox {native_id}", sandbox.files.write(path, content, user=PROCESS_USER))

    async def stream(
        self, native_id: str, argv: list[str], env: dict[str, str] | None = None
    ) -> AsyncIterator[Output | Exit]:
        subject = f"sandbox {native_id}"
        sandbox, rpc = await self._connect(native_id)
        request = process_pb.StartRequest(
            process=process_pb.ProcessConfig(cmd=argv[0], args=argv[1:], envs=env or {}), stdin=False
        )
        headers = {
            **authentication_header(ENVD_DEFAULT_USER, PROCESS_USER),
            KEEPALIVE_PING_HEADER: str(KEEPALIVE_PING_INTERVAL_SEC),
        }
        # timeout_ms=None: no deadline on the stream as a whole (agent runs take as long as they take).
        events = as_stream(rpc.start(request, headers=headers, timeout_ms=None))
        code: int | None = None
        try:
            async for response in events:
                event = response.event.event.value if response.event and response.event.event else None
                if isinstance(event, process_pb.ProcessEvent.DataEvent) and event.output is not None:
                    if event.output.field in _FDS:
                        yield Output(_FDS[event.output.field], event.output.value)
                elif isinstance(event, process_pb.ProcessEvent.EndEvent):
                    # A process killed by a signal has no exit code of its own.
                    code = event.exit_code if event.exited and event.exit_code >= 0 else 255
            # The Exit comes only after the RPC's end of stream: consumers stop reading at the Exit without
            # closing this iterator, and the connection must be back in the pool by then.
            if code is None:
                raise unavailable("STREAM_INTERRUPTED", f"the process stream of {subject} ended early")
            yield Exit(code)
        except ApiError:
            raise
        except Exception as exc:
            raise await self._process_error(exc, sandbox, subject) from exc
        finally:
            # Stopping early resets the HTTP stream (hyper sends RST_STREAM / closes the HTTP/1.1 connection).
            with contextlib.suppress(Exception):
                await events.aclose()

    async def _process_error(self, exc: Exception, sandbox: AsyncSandbox, subject: str) -> BaseException:
        envd = get_envd_api(sandbox.connection_config, sandbox.envd_api_url, retry_connect=False)

        async def check_health() -> bool | None:
            return await acheck_sandbox_health(envd)

        # The SDK's own handling: probes envd's health to tell "the sandbox is gone" from a broken connection.
        try:
            handled = await ahandle_rpc_exception_with_health(exc, check_health)
        finally:
            await envd.aclose()
        if isinstance(handled, BaseException) and not isinstance(handled, Exception):
            return handled  # cancellation stays cancellation
        mapped = map_e2b_error(handled, subject)
        if mapped is not None and mapped.code == grpc.StatusCode.NOT_FOUND:
            self._connected.pop(sandbox.sandbox_id, None)
        if mapped is not None and mapped.reason == "PROVIDER_UNAVAILABLE":
            return unavailable("STREAM_INTERRUPTED", f"the process stream of {subject} broke; retry or re-attach")
        return mapped or handled

    async def close(self) -> None:
        self._connected.clear()
