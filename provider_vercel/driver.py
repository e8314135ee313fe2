"""The Vercel driver: sandboxes are Vercel Sandboxes, driven with the `vercel` SDK (vercel.sandbox).

A sandbox is addressed by its name, which is the native id. Vercel allows five tags per sandbox, so the
platform's facts live in five tags: the owner (for the reaper), the tenant (for listing), the expiry, the
request id, and one compact record (request hash, create time, spec without env, user labels, kit
metadata). Any replica reads everything back from Vercel; nothing is kept locally.

Vercel's command logs carry text, not bytes, so every command runs under a small perl framer that
base64-encodes its stdout and stderr chunk by chunk as they come, tagged by stream, and reports the exit
code in-band: output stays byte-exact and live, and an exit code that never arrived tells a broken stream
from a finished one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import subprocess
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc
import httpx2
from vercel.sandbox import (
    NetworkPolicy,
    Sandbox,
    SandboxApiError,
    SandboxClient,
    SandboxCredentials,
    SandboxQueryByName,
    SandboxResources,
    SandboxServiceOptions,
    SandboxStatus,
    TagFilter,
)

from provider_kit import records
from provider_kit.driver import Driver, Exit, NewSandbox, Output, SandboxRecord
from provider_kit.errors import ApiError, invalid_argument, not_found, unavailable
from provider_kit.listing import first_present, unless_gone
from provider_vercel.errors import map_vercel_error
from provider_vercel.settings import VercelSettings
from sandbox.v1 import sandbox_pb2

T = TypeVar("T")
TAG_OWNER = "sp-owner"
TAG_TENANT = "sp-tenant"
TAG_EXPIRE = "sp-expire"
TAG_REQUEST = "sp-request"
TAG_RECORD = "sp-record"
# Vercel bills whole vCPUs and gives each 2 GB of memory.
MEMORY_MB_PER_VCPU = 2048
# Reads are idempotent: retry them on transient failures, with backoff.
READ_ATTEMPTS = 3
RETRY_BACKOFF_SECONDS = 0.3
CREATE_CONFLICT_WAIT_SECONDS = 30.0
# vercel/sandbox/_internal/pagination.py allows pages of 1 to 50.
QUERY_PAGE_SIZE = 50

# Runs argv with stdout and stderr on pipes and prints, on its own stdout, one line per chunk read:
# "1" or "2" then the chunk in base64; finally "x" and the exit code (128+N for a signal). The command
# runs in its own process group, which SIGTERM to the framer ends.
FRAMER = r"""
use strict; use warnings; use IO::Select; use MIME::Base64;
$| = 1;
pipe(my $or, my $ow) or die "pipe: $!"; pipe(my $er, my $ew) or die "pipe: $!";
my $pid = fork() // die "fork: $!";
if (!$pid) {
  setpgrp(0, 0);
  close $or; close $er;
  open(STDOUT, '>&', $ow) or die; open(STDERR, '>&', $ew) or die;
  exec { $ARGV[0] } @ARGV or do { print STDERR "$ARGV[0]: $!\n"; exit 127 };
}
# Stopped early (nobody reads any more): take the command's process group down too.
$SIG{TERM} = sub { kill 'TERM', -$pid; exit 143 };
close $ow; close $ew;
my %tag = (fileno($or) => '1', fileno($er) => '2');
my $sel = IO::Select->new($or, $er);
while ($sel->count) {
  for my $h ($sel->can_read) {
    my $n = sysread($h, my $buf, 65536);
    if (!$n) { next if !defined($n) && $!{EINTR}; $sel->remove($h); close $h; next; }
    print $tag{fileno($h)}, encode_base64($buf, ''), "\n";
  }
}
waitpid($pid, 0);
my $code = ($? & 127) ? 128 + ($? & 127) : $? >> 8;
print "x$code\n";
exit $code;
"""


def _pack(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(zlib.compress(json.dumps(data, separators=(",", ":")).encode())).decode()


def _unpack(value: str) -> dict[str, Any]:
    try:
        data = json.loads(zlib.decompress(base64.urlsafe_b64decode(value)))
    except (ValueError, zlib.error):
        return {}
    return data if isinstance(data, dict) else {}


class VercelDriver(Driver):
    name = "vercel"

    def __init__(self, settings: VercelSettings) -> None:
        self._settings = settings
        token = settings.vercel_token

        async def credentials() -> SandboxCredentials:
            assert token is not None
            return SandboxCredentials(
                token=token.get_secret_value(), team_id=settings.vercel_team_id, project_id=settings.vercel_project_id
            )

        timeout = settings.vercel_request_timeout_seconds
        self._client = SandboxClient.create(
            options=SandboxServiceOptions(
                base_url=settings.vercel_api_url,
                # Without a token the SDK resolves credentials itself (Vercel OIDC).
                credentials_factory=credentials if token is not None else None,
            ),
            httpx_client_factory=lambda: httpx2.AsyncClient(
                timeout=httpx2.Timeout(timeout), limits=httpx2.Limits(max_connections=100)
            ),
        )

    # -- calls ---------------------------------------------------------------------------------------------

    async def _call(self, subject: str, fn: Callable[[], Awaitable[T]], *, retry: bool = False) -> T:
        """One SDK call with its errors mapped; idempotent reads (retry=True) are retried on transient failures."""
        attempts = READ_ATTEMPTS if retry else 1
        for attempt in range(attempts):
            try:
                return await fn()
            except Exception as exc:
                mapped = map_vercel_error(exc, subject)
                if mapped is None:
                    raise
                transient = mapped.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                if not transient or attempt == attempts - 1:
                    raise mapped from exc
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    async def _sandbox(self, native_id: str) -> Sandbox:
        sandbox = await self._call(f"sandbox {native_id}", lambda: self._client.get_sandbox(name=native_id), retry=True)
        if (sandbox.tags or {}).get(TAG_OWNER) != self._settings.vercel_owner:
            raise not_found("SANDBOX_NOT_FOUND", f"sandbox {native_id} does not exist")
        return sandbox

    # -- spec ----------------------------------------------------------------------------------------------

    def apply_defaults(self, spec: sandbox_pb2.SandboxSpec, tenant: str) -> sandbox_pb2.SandboxSpec:
        s = self._settings
        out = sandbox_pb2.SandboxSpec()
        out.CopyFrom(spec)
        out.image = spec.image or s.vercel_default_image
        vcpus = math.ceil(spec.milli_cpus / 1000) if spec.milli_cpus else s.vercel_default_vcpus
        out.milli_cpus = vcpus * 1000
        if vcpus > s.vercel_max_vcpus:
            raise invalid_argument(
                "LIMIT_EXCEEDED",
                f"spec.milli_cpus must be at most {s.vercel_max_vcpus * 1000}",
                field="spec.milli_cpus",
            )
        # Memory comes with the vCPUs on Vercel: a request may ask for less, never more.
        memory = vcpus * MEMORY_MB_PER_VCPU * 2**20
        if spec.memory_bytes > memory:
            raise invalid_argument(
                "LIMIT_EXCEEDED",
                f"spec.memory_bytes must be at most {memory} for {vcpus} vCPUs",
                field="spec.memory_bytes",
            )
        out.memory_bytes = memory
        if spec.pids_limit:
            raise invalid_argument(
                "UNSUPPORTED_FIELD", "spec.pids_limit is not supported on Vercel", field="spec.pids_limit"
            )
        if spec.network_mode not in ("", "none"):
            raise invalid_argument(
                "NETWORK_MODE_NOT_ALLOWED",
                "spec.network_mode must be empty (full egress) or none on Vercel",
                field="spec.network_mode",
            )
        if spec.mounts:
            raise invalid_argument("MOUNT_NOT_ALLOWED", "spec.mounts are not supported on Vercel", field="spec.mounts")
        return out

    # -- records -------------------------------------------------------------------------------------------

    def _tags(self, new: NewSandbox) -> dict[str, str]:
        record = {
            "h": new.request_hash,
            "c": records.epoch(new.create_time),
            "s": records.encode_spec(new.spec),
            "l": new.labels,
            "m": new.metadata,
        }
        return {
            TAG_OWNER: self._settings.vercel_owner,
            TAG_TENANT: new.tenant,
            TAG_EXPIRE: records.epoch(new.expire_time),
            TAG_REQUEST: new.request_id,
            TAG_RECORD: _pack(record),
        }

    def _record(self, sandbox: Sandbox) -> SandboxRecord:
        tags = sandbox.tags or {}
        record = _unpack(tags.get(TAG_RECORD, ""))
        spec = records.decode_spec(str(record.get("s", "")))
        status = sandbox.status
        if sandbox.current_session is not None and sandbox.current_session.status is not None:
            status = sandbox.current_session.status
        states = {
            SandboxStatus.RUNNING: sandbox_pb2.Sandbox.STATE_RUNNING,
            SandboxStatus.PENDING: sandbox_pb2.Sandbox.STATE_STARTING,
        }
        return SandboxRecord(
            native_id=sandbox.name,
            tenant=tags.get(TAG_TENANT, ""),
            request_id=tags.get(TAG_REQUEST, ""),
            request_hash=str(record.get("h", "")),
            spec=spec,
            labels=dict(record.get("l") or {}),
            state=states.get(status, sandbox_pb2.Sandbox.STATE_STOPPED)
            if status
            else sandbox_pb2.Sandbox.STATE_STOPPED,
            create_time=records.from_epoch(str(record.get("c", ""))),
            expire_time=records.from_epoch(tags.get(TAG_EXPIRE, "")),
            metadata=dict(record.get("m") or {}),
            # Vercel routes each port declared at creation (query results carry no routes: see list_sandboxes).
            endpoints=[
                sandbox_pb2.Endpoint(port=route.port, url=route.url)
                for route in sandbox.routes
                if route.port in spec.ports and not route.system
            ],
        )

    def _name(self, new: NewSandbox) -> str:
        if new.request_id:
            # Deterministic, so Vercel's unique names make concurrent retries create one sandbox.
            digest = hashlib.sha256(f"{new.tenant}\0{new.request_id}".encode()).hexdigest()
            return f"sbx-{digest[:20]}"
        return f"sbx-{uuid.uuid4().hex[:20]}"

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def create(self, new: NewSandbox) -> SandboxRecord:
        name = self._name(new)
        spec = new.spec
        ttl = (new.expire_time - new.create_time).total_seconds()
        # The session lives as long as the sandbox may (the reaper destroys it at expiry), up to Vercel's
        # maximum; streams extend it while they run (see _keep_session).
        session_seconds = max(1.0, min(ttl, self._settings.vercel_max_session_seconds))
        try:
            sandbox = await self._call(
                f"sandbox {name}",
                lambda: self._client.create_sandbox(
                    name=name,
                    image=spec.image or None,
                    resources=SandboxResources(vcpus=spec.milli_cpus // 1000, memory=spec.memory_bytes // 2**20),
                    execution_time_limit=timedelta(seconds=session_seconds),
                    network_policy=NetworkPolicy.deny_all() if spec.network_mode == "none" else None,
                    ports=list(spec.ports) or None,
                    env=dict(spec.env) or None,
                    tags=self._tags(new),
                ),
            )
        except ApiError as err:
            cause = err.__cause__
            if not (isinstance(cause, SandboxApiError) and cause.status_code == 409 and new.request_id):
                raise
            # The same request_id was used before: hand back that sandbox (the kit compares request hashes).
            return await self._wait_running(name)
        return self._record(sandbox)

    async def _wait_running(self, name: str) -> SandboxRecord:
        """A sandbox another request is creating: wait until it runs (or give up and report it as it is)."""
        deadline = time.monotonic() + CREATE_CONFLICT_WAIT_SECONDS
        while True:
            try:
                record = self._record(await self._sandbox(name))
            except ApiError as err:
                # The name is taken but the sandbox not yet readable.
                if err.code != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                    raise
            else:
                if record.state != sandbox_pb2.Sandbox.STATE_STARTING or time.monotonic() > deadline:
                    return record
            await asyncio.sleep(0.2)

    async def get(self, native_id: str, *, endpoints: bool = True) -> SandboxRecord:
        return self._record(await self._sandbox(native_id))

    async def _query(self, tag: TagFilter) -> list[Sandbox]:
        async def collect() -> list[Sandbox]:
            query = SandboxQueryByName(sort_order="asc", tag=tag)
            return [s async for s in self._client.query_sandboxes(query=query, page_size=QUERY_PAGE_SIZE)]

        return await self._call("sandboxes", collect, retry=True)

    async def list_sandboxes(self, tenant: str, labels: dict[str, str], after: str, limit: int) -> list[SandboxRecord]:
        # Vercel filters on one tag per query: the tenant; owner and labels are checked here.
        found = await self._query(TagFilter(key=TAG_TENANT, value=tenant))
        mine = [
            self._record(s)
            for s in found
            if (s.tags or {}).get(TAG_OWNER) == self._settings.vercel_owner and s.name > after
        ]
        matching = [r for r in mine if all(r.labels.get(k) == v for k, v in labels.items())]
        matching.sort(key=lambda r: r.native_id)

        async def with_routes(record: SandboxRecord) -> SandboxRecord | None:
            # Query results leave routes out: a sandbox that serves ports is read again.
            return await unless_gone(self.get(record.native_id)) if record.spec.ports else record

        return await first_present(matching, with_routes, limit)

    async def delete(self, native_id: str) -> None:
        try:
            sandbox = await self._sandbox(native_id)
            # Idempotent, so retried: a retry that finds the sandbox gone has what it wants.
            await self._call(f"sandbox {native_id}", lambda: sandbox.destroy(delete_orphan_snapshots=True), retry=True)
        except ApiError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                raise

    async def reap_expired(self, now: datetime) -> int:
        found = await self._query(TagFilter(key=TAG_OWNER, value=self._settings.vercel_owner))
        # A sandbox without an expiry was not made by a provider (never guess: leave it alone).
        expires = {s.name: (s.tags or {}).get(TAG_EXPIRE, "") for s in found}
        expired = [name for name, expire in expires.items() if expire and records.from_epoch(expire) <= now]
        for name in expired:
            await self.delete(name)
        return len(expired)

    async def ready(self) -> bool:
        try:
            query = SandboxQueryByName(tag=TagFilter(key=TAG_OWNER, value=self._settings.vercel_owner))
            async for _ in self._client.query_sandboxes(query=query, page_size=1):
                break
            return True
        except Exception:
            return False

    async def close(self) -> None:
        await self._client.aclose()

    # -- processes -----------------------------------------------------------------------------------------

    @staticmethod
    def _session_end(sandbox: Sandbox) -> float | None:
        session = sandbox.current_session
        if session is None or session.started_at is None or session.execution_time_limit is None:
            return None
        return session.started_at / 1000 + session.execution_time_limit.total_seconds()

    async def _keep_session(self, sandbox: Sandbox, expire_time: datetime) -> None:
        """Extends the running session so it lasts vercel_session_margin_seconds more, but never past the sandbox's
        expiry: long agent runs outlive the session length chosen at creation (Vercel caps a session's
        total length by plan; past that the extension fails and the session ends)."""
        ends = self._session_end(sandbox)
        wanted = min(time.time() + self._settings.vercel_session_margin_seconds, expire_time.timestamp())
        if ends is not None and wanted - ends >= 1:
            await self._call(
                f"sandbox {sandbox.name}",
                lambda: sandbox.extend_execution_time_limit(timedelta(seconds=math.ceil(wanted - ends))),
            )

    async def _keep_session_forever(self, native_id: str, expire_time: datetime) -> None:
        while True:
            await asyncio.sleep(self._settings.vercel_session_check_seconds)
            with contextlib.suppress(ApiError):  # the next round tries again
                await self._keep_session(await self._sandbox(native_id), expire_time)

    async def upload(self, native_id: str, path: str, content: bytes) -> None:
        sandbox = await self._sandbox(native_id)
        # Retried like a read: writing the same bytes to the same fresh path twice changes nothing.
        await self._call(f"sandbox {native_id}", lambda: sandbox.fs.write_bytes(path, content), retry=True)

    async def stream(
        self, native_id: str, argv: list[str], env: dict[str, str] | None = None
    ) -> AsyncIterator[Output | Exit]:
        subject = f"sandbox {native_id}"
        sandbox = await self._sandbox(native_id)
        expire_time = records.from_epoch((sandbox.tags or {}).get(TAG_EXPIRE, ""))
        with contextlib.suppress(ApiError):  # a failed extension must not fail the command
            await self._keep_session(sandbox, expire_time)
        # Not retried: a retry could run the command twice.
        process = await self._call(
            subject,
            lambda: sandbox.create_process(
                "perl", ["-e", FRAMER, "--", *argv], env=env or None, sudo=True, stderr=subprocess.DEVNULL
            ),
        )
        reader = process.stdout
        assert reader is not None
        finished = False
        # Only sessions shorter than the sandbox's life need watching while the command runs (also in silence).
        ends = self._session_end(sandbox)
        keeper = (
            asyncio.create_task(self._keep_session_forever(native_id, expire_time))
            if ends is not None and ends < expire_time.timestamp()
            else None
        )
        try:
            while True:
                try:
                    line = await reader.readline()
                except Exception as exc:
                    mapped = map_vercel_error(exc, subject)
                    raise (mapped or exc) from exc
                if not line.endswith("\n"):
                    break  # the log stream ended before the framer's exit line
                tag, payload = line[0], line[1:-1]
                if tag == "x":
                    finished = True
                    yield Exit(int(payload))
                    return
                yield Output(1 if tag == "1" else 2, base64.b64decode(payload))
        finally:
            if keeper is not None:
                keeper.cancel()
            # Releases the log connection, also when the consumer stops early; then ends the framer (and
            # so the follower it runs), which would otherwise keep running with nobody reading it.
            await reader.aclose()
            if not finished:
                with contextlib.suppress(Exception):
                    await asyncio.shield(process.terminate())
        # No exit line: tell a vanished sandbox from a broken stream.
        await self._sandbox(native_id)
        raise unavailable("STREAM_INTERRUPTED", f"the output stream from {subject} ended early; retry or re-attach")
