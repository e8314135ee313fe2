"""The Daytona driver: sandboxes are Daytona sandboxes, driven with the async `daytona` SDK.

Everything the platform needs to know about a sandbox is kept in its Daytona labels, so any replica can
serve any sandbox. Processes run as session commands (run_async) whose output is followed over the logs
WebSocket. That stream is text (the SDK decodes it as UTF-8 and frames it with in-band byte prefixes), so
the command's stdout and stderr are base64-encoded line by line inside the sandbox and decoded here: every
byte value arrives intact.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import math
import shlex
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from daytona import (
    AsyncDaytona,
    AsyncSandbox,
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    DaytonaConfig,
    DaytonaConflictError,
    DaytonaError,
    ListSandboxesQuery,
    Resources,
    SessionExecuteRequest,
)
from daytona.common.errors import SOURCE_DAEMON
from daytona_api_client_async import SandboxState

from provider_daytona.errors import map_daytona_error
from provider_daytona.settings import DaytonaSettings
from provider_kit import records
from provider_kit.driver import Driver, Exit, NewSandbox, Output, SandboxRecord
from provider_kit.errors import ApiError, failed_precondition, invalid_argument, not_found, unavailable
from provider_kit.listing import first_present, unless_gone
from provider_kit.workspace import Setup
from sandbox.v1 import sandbox_pb2

T = TypeVar("T")
# How many decoded output chunks may wait for the gRPC consumer before the WebSocket reader pauses.
STREAM_BUFFER_CHUNKS = 64
RESERVED_NAME_ATTEMPTS = 50
READ_ATTEMPTS = 3
# Daytona has no host or bridge networking to choose; "none" blocks all network access.
NETWORK_MODES = ("", "host", "bridge", "none")
# The header a private sandbox's preview URLs want its preview token in (AsyncSandbox.get_preview_link).
PREVIEW_TOKEN_HEADER = "X-Daytona-Preview-Token"  # noqa: S105  (a header name, not a secret)

# Inside the sandbox: runs argv with stdout and stderr each passed through ENCODE, which writes one base64
# line per read (sysread returns what is there, so output stays live). The exit status is argv's.
ENCODE = r'use MIME::Base64; binmode STDIN; $| = 1; while (sysread(STDIN, my $b, 65536)) { print encode_base64($b, ""), "\n" }'  # noqa: E501
WRAP = r"""
e=$1 f=$2; shift 2
if [ -n "$f" ]; then set -a; . "$f"; rm -f -- "$f"; set +a; fi
set -o pipefail
"$@" 2> >(perl -e "$e" >&2) | perl -e "$e"
code=$?
wait $! 2>/dev/null
exit $code
"""


def _state(state: SandboxState | None) -> sandbox_pb2.Sandbox.State.ValueType:
    if state == SandboxState.STARTED:
        return sandbox_pb2.Sandbox.STATE_RUNNING
    if state in (
        SandboxState.CREATING,
        SandboxState.STARTING,
        SandboxState.PENDING_BUILD,
        SandboxState.BUILDING_SNAPSHOT,
        SandboxState.PULLING_SNAPSHOT,
        SandboxState.RESTORING,
    ):
        return sandbox_pb2.Sandbox.STATE_STARTING
    return sandbox_pb2.Sandbox.STATE_STOPPED


def _credentials(token: str) -> tuple[str | None, str | None]:
    """A git token as the username/password pair Daytona's git API takes (hosts read the token as password)."""
    return ("x-access-token", token) if token else (None, None)


class _Lines:
    """Reassembles base64 lines from text chunks cut anywhere, and decodes the complete ones."""

    def __init__(self) -> None:
        self._partial = ""

    def feed(self, text: str) -> bytes:
        text = self._partial + text
        complete, _, self._partial = text.rpartition("\n")
        try:
            return b"".join(base64.b64decode(line) for line in complete.split("\n") if line)
        except binascii.Error as exc:
            raise unavailable("STREAM_CORRUPTED", "the output stream from Daytona was corrupted; re-attach") from exc


class DaytonaDriver(Driver):
    name = "daytona"

    def __init__(self, settings: DaytonaSettings) -> None:
        self._settings = settings
        self._daytona: AsyncDaytona | None = None

    def _client(self) -> AsyncDaytona:
        # Built on first use: the SDK starts background tasks, so it needs the running event loop.
        if self._daytona is None:
            s = self._settings
            self._daytona = AsyncDaytona(
                DaytonaConfig(
                    api_key=s.daytona_api_key.get_secret_value(),
                    api_url=s.daytona_api_url,
                    target=s.daytona_target or None,
                )
            )
        return self._daytona

    async def _call(self, subject: str, fn: Callable[[], Awaitable[T]], *, read: bool = False) -> T:
        """Runs one SDK call, mapping its errors. Reads (idempotent) are retried on transient failures."""
        for attempt in range(READ_ATTEMPTS if read else 1):
            try:
                return await fn()
            except Exception as exc:
                mapped = map_daytona_error(exc, subject)
                if mapped is None:
                    raise
                transient = mapped.code == grpc.StatusCode.UNAVAILABLE
                if not (read and transient and attempt + 1 < READ_ATTEMPTS):
                    raise mapped from exc
            await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def apply_defaults(self, spec: sandbox_pb2.SandboxSpec, tenant: str) -> sandbox_pb2.SandboxSpec:
        s = self._settings
        if spec.network_mode not in NETWORK_MODES:
            raise invalid_argument(
                "NETWORK_MODE_NOT_ALLOWED",
                "spec.network_mode must be empty, host, bridge or none on Daytona",
                field="spec.network_mode",
            )
        if spec.mounts:
            raise invalid_argument(
                "MOUNT_NOT_ALLOWED", "Daytona sandboxes cannot mount host paths", field="spec.mounts"
            )
        limits = [
            ("spec.milli_cpus", spec.milli_cpus, s.daytona_max_cpus * 1000),
            ("spec.memory_bytes", spec.memory_bytes, s.daytona_max_memory_gib << 30),
        ]
        for field, value, maximum in limits:
            if value > maximum:
                raise invalid_argument("LIMIT_EXCEEDED", f"{field} must be at most {maximum}", field=field)
        return spec

    def _labels(self, new: NewSandbox) -> dict[str, str]:
        return records.encode(new, self._settings.daytona_owner)

    async def _record(self, sandbox: AsyncSandbox, *, endpoints: bool = True) -> SandboxRecord:
        record = records.decode(sandbox.id, dict(sandbox.labels or {}), _state(sandbox.state))
        # A sandbox that is not running serves nothing (and Daytona may refuse its links).
        if not (endpoints and record.spec.ports and record.state == sandbox_pb2.Sandbox.STATE_RUNNING):
            return record
        # Daytona serves every port at a preview URL; a private sandbox's also needs its preview token.

        async def endpoint(port: int) -> sandbox_pb2.Endpoint:
            link = await self._call(f"sandbox {sandbox.id}", lambda: sandbox.get_preview_link(port), read=True)
            headers = {PREVIEW_TOKEN_HEADER: link.token} if link.token else {}
            return sandbox_pb2.Endpoint(port=port, url=link.url, headers=headers)

        links = await asyncio.gather(*(endpoint(port) for port in record.spec.ports))
        return dataclasses.replace(record, endpoints=list(links))

    def _params(self, new: NewSandbox, name: str) -> CreateSandboxFromImageParams | CreateSandboxFromSnapshotParams:
        spec = new.spec
        ttl_seconds = max(0.0, (new.expire_time - new.create_time).total_seconds())
        common: dict[str, Any] = {
            "name": name,
            "labels": self._labels(new),
            "env_vars": dict(spec.env),
            "network_block_all": spec.network_mode == "none",
            # Daytona destroys the sandbox itself when its TTL ends, so a lost reaper leaks nothing.
            "ttl_minutes": max(1, math.ceil(ttl_seconds / 60)),
            "auto_stop_interval": self._settings.daytona_auto_stop_minutes,
            # A stopped sandbox is of no further use to the platform: delete it rather than keep it around.
            "auto_delete_interval": 0 if self._settings.daytona_auto_stop_minutes else -1,
        }
        if spec.image:
            resources = Resources(
                cpu=max(1, math.ceil(spec.milli_cpus / 1000)) if spec.milli_cpus else None,
                memory=max(1, math.ceil(spec.memory_bytes / 2**30)) if spec.memory_bytes else None,
            )
            return CreateSandboxFromImageParams(image=spec.image, resources=resources, **common)
        return CreateSandboxFromSnapshotParams(snapshot=self._settings.daytona_default_snapshot or None, **common)

    async def create(self, new: NewSandbox) -> SandboxRecord:
        if new.request_id:
            # Deterministic, so Daytona's unique sandbox names make concurrent retries create one sandbox.
            digest = hashlib.sha256(f"{new.tenant}\0{new.request_id}".encode()).hexdigest()
            name = f"sbx-{digest[:20]}"
        else:
            name = f"sbx-{uuid.uuid4().hex[:20]}"
        params = self._params(new, name)
        timeout = self._settings.daytona_create_timeout_seconds
        try:
            sandbox = await self._call(f"sandbox {name}", lambda: self._client().create(params, timeout=timeout))
        except ApiError as err:
            if not (isinstance(err.__cause__, DaytonaConflictError) and new.request_id):
                if err.code == grpc.StatusCode.NOT_FOUND:
                    raise ApiError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "IMAGE_NOT_FOUND",
                        f"image or snapshot {new.spec.image or 'default'!r} is not available on Daytona",
                    ) from err
                if err.code == grpc.StatusCode.UNAVAILABLE and not new.request_id:
                    # The SDK gave up waiting, but Daytona may have made it: nobody could find it again, so
                    # delete it (a sandbox that appears later still ends with its TTL, or the reaper).
                    with contextlib.suppress(ApiError):
                        await self.delete(name)
                raise
            # The same request_id was used before: hand back that sandbox (the kit compares request hashes).
            return await self._get_reserved(name)
        try:
            return await self._record(sandbox)
        except BaseException:
            # Its preview links could not be read: the caller sees a failed create, so leave no sandbox that
            # nobody could find. With a request_id a retry finds it (and a concurrent caller may hold it).
            if not new.request_id:
                with contextlib.suppress(ApiError):
                    await self.delete(sandbox.id)
            raise

    async def _get_reserved(self, name: str) -> SandboxRecord:
        """Reads a sandbox whose name another request has taken; it may still be starting."""
        for _ in range(RESERVED_NAME_ATTEMPTS):
            try:
                record = await self.get(name)
                if record.state == sandbox_pb2.Sandbox.STATE_RUNNING:
                    return record
            except ApiError as err:
                if err.code != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.2)
        return await self.get(name)

    async def _sandbox(self, native_id: str) -> AsyncSandbox:
        sandbox = await self._call(f"sandbox {native_id}", lambda: self._client().get(native_id), read=True)
        if (sandbox.labels or {}).get(records.OWNER_KEY) != self._settings.daytona_owner:
            raise not_found("SANDBOX_NOT_FOUND", f"sandbox {native_id} does not exist")
        return sandbox

    async def get(self, native_id: str, *, endpoints: bool = True) -> SandboxRecord:
        return await self._record(await self._sandbox(native_id), endpoints=endpoints)

    async def _managed(self, labels: dict[str, str]) -> list[AsyncSandbox]:
        query = ListSandboxesQuery(labels={records.OWNER_KEY: self._settings.daytona_owner, **labels}, limit=100)

        async def collect() -> list[AsyncSandbox]:
            return [s async for s in self._client().list(query)]

        return await self._call("sandboxes", collect, read=True)

    async def list_sandboxes(self, tenant: str, labels: dict[str, str], after: str, limit: int) -> list[SandboxRecord]:
        wanted = {records.TENANT_KEY: tenant, **{f"{records.USER_LABEL}{k}": v for k, v in labels.items()}}
        found = sorted(await self._managed(wanted), key=lambda s: s.id)
        # Reading preview links may find a sandbox deleted since it was listed: it is left out.
        return await first_present([s for s in found if s.id > after], lambda s: unless_gone(self._record(s)), limit)

    async def delete(self, native_id: str) -> None:
        try:
            sandbox = await self._sandbox(native_id)
            await self._call(f"sandbox {native_id}", lambda: sandbox.delete())
        except ApiError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                raise

    async def reap_expired(self, now: datetime) -> int:
        # A sandbox without an expiry was not made by a provider (never guess: leave it alone).
        expired = [
            s.id
            for s in await self._managed({})
            if (s.labels or {}).get(records.EXPIRE_KEY) and records.from_epoch(s.labels[records.EXPIRE_KEY]) <= now
        ]
        for native_id in expired:
            await self.delete(native_id)
        return len(expired)

    async def ready(self) -> bool:
        # A query that matches nothing: one authenticated round trip, and the SDK's traced generator runs to
        # its end (breaking out of it leaves it to be finalized in another context, which OpenTelemetry logs).
        query = ListSandboxesQuery(labels={f"{records.KEY}readiness-probe": "1"}, limit=1)
        try:
            async for _ in self._client().list(query):
                pass
        except Exception:
            return False
        return True

    async def close(self) -> None:
        if self._daytona is not None:
            await self._daytona.close()  # type: ignore[no-untyped-call]

    async def upload(self, native_id: str, path: str, content: bytes) -> None:
        sandbox = await self._sandbox(native_id)
        await self._call(f"sandbox {native_id}", lambda: sandbox.fs.upload_file(content, path))

    async def stream(
        self, native_id: str, argv: list[str], env: dict[str, str] | None = None
    ) -> AsyncIterator[Output | Exit]:
        subject = f"sandbox {native_id}"
        sandbox = await self._sandbox(native_id)
        process = sandbox.process
        # One session per process: deleting it when the stream ends (or its consumer leaves) ends the
        # command's process group.
        session = f"sbx-{uuid.uuid4().hex}"
        env_file = ""
        if env:
            # env may hold secrets: it goes in a private file that the command reads and deletes before it
            # starts, so it is never part of a command line the daemon keeps or shows.
            env_file = f"/tmp/.sandbox-env-{uuid.uuid4().hex}"
            content = "".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items()).encode()
            await self._call(subject, lambda: sandbox.fs.upload_file(content, env_file))
        command = shlex.join(["bash", "-c", WRAP, "sandbox-daytona", ENCODE, env_file, *argv])
        await self._call(subject, lambda: process.create_session(session))
        queue: asyncio.Queue[Output | BaseException | None] = asyncio.Queue(STREAM_BUFFER_CHUNKS)
        decoders = {1: _Lines(), 2: _Lines()}

        def handler(fd: int) -> Callable[[str], Awaitable[None]]:
            async def on_text(text: str) -> None:
                data = decoders[fd].feed(text)
                if data:
                    await queue.put(Output(fd, data))  # waits while the consumer is behind

            return on_text

        async def follow(cmd_id: str) -> None:
            try:
                await process.get_session_command_logs_async(session, cmd_id, handler(1), handler(2))
                await queue.put(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await queue.put(exc)

        follower: asyncio.Task[None] | None = None
        try:
            request = SessionExecuteRequest(command=command, run_async=True)
            started = await self._call(subject, lambda: process.execute_session_command(session, request))
            cmd_id = started.cmd_id
            follower = asyncio.create_task(follow(cmd_id))
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    mapped = map_daytona_error(item, subject)
                    if isinstance(item, DaytonaError) and (mapped is None or mapped.code != grpc.StatusCode.NOT_FOUND):
                        # A log stream that breaks mid-way: the process may still run.
                        mapped = unavailable("STREAM_INTERRUPTED", f"the output stream from {subject} broke")
                    raise mapped or item
                yield item
            code = await self._exit_code(process, session, cmd_id, subject)
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(BaseException):
                    await follower
            with contextlib.suppress(Exception):
                await process.delete_session(session)
        # Only after the cleanup: consumers often stop at the Exit without closing the iterator.
        yield Exit(code)

    native_git = True

    async def _git(self, native_id: str, token: str, failure: Callable[[str, str], ApiError], call: Awaitable[T]) -> T:
        """One call of Daytona's git API. A refusal by git (the daemon's GIT_* errors) becomes
        failure(daemon code, git's message without the token); anything else is mapped like other SDK errors."""
        try:
            return await call
        except DaytonaError as exc:
            if exc.source != SOURCE_DAEMON or not (exc.code or "").startswith("GIT_"):
                raise map_daytona_error(exc, f"sandbox {native_id}") or exc from exc
            message = exc.message.replace(token, "[REDACTED]") if token else exc.message
            raise failure(exc.code or "", message[-2000:]) from exc

    async def clone_workspace(self, native_id: str, setup: Setup, directory: str) -> None:
        git = (await self._sandbox(native_id)).git
        token = setup.token

        def refused(code: str, message: str) -> ApiError:
            return failed_precondition("CLONE_FAILED", f"cloning {setup.url} failed ({code}): {message}")

        # Daytona's git API takes the credentials per call; they never reach the sandbox's files.
        user, password = _credentials(token)
        clone = git.clone(
            setup.url,
            directory,
            branch=setup.base_ref or None,
            depth=setup.depth or None,
            username=user,
            password=password,
        )
        await self._git(native_id, token, refused, clone)
        if not (await self._git(native_id, token, refused, git.branches(directory))).branches:
            return  # an empty repository: the setup script starts the branch
        await self._git(native_id, token, refused, git.create_branch(directory, setup.branch))
        await self._git(native_id, token, refused, git.checkout_branch(directory, setup.branch))

    async def _exit_code(self, process: Any, session: str, cmd_id: str, subject: str) -> int:
        # The daemon records the exit code as the command ends; the log stream may close a moment before.
        for _ in range(100):
            command = await self._call(subject, lambda: process.get_session_command(session, cmd_id), read=True)
            if command.exit_code is not None:
                return int(command.exit_code)
            await asyncio.sleep(0.05)
        raise unavailable("STREAM_INTERRUPTED", f"{subject} did not report an exit code; retry")
