"""A local emulator of the parts of E2B that the real `e2b` SDK (2.63.0) uses, backed by Docker containers.

Derived from the SDK's generated REST client (e2b/api/client/api/sandboxes/*.py and models/*.py, which follow
E2B's public OpenAPI spec) and from envd's Connect RPC stubs that the SDK ships (e2b/envd/process/
process_connect.py). One HTTP/1.1 server on 127.0.0.1 serves both planes:

- the control plane (the SDK's E2B_API_URL): POST /v2/sandboxes, GET /sandboxes/{id}, GET /v2/sandboxes,
  DELETE /sandboxes/{id}, POST /sandboxes/{id}/timeout, POST /v2/sandboxes/{id}/connect;
- every sandbox's envd (the SDK's E2B_SANDBOX_URL): with a sandbox URL set the SDK sends all envd traffic to
  that one URL and names the sandbox in the `E2b-Sandbox-Id` header (e2b/sandbox_async/main.py), just as E2B's
  edge proxy routes it. /health and the process.Process service (Start, Connect, List, SendSignal) are served;
  a request for a sandbox that is gone gets the proxy's 502 "... was not found", as in production.

Each sandbox is a real container (host networking, init, `sleep infinity`), so commands really run and their
output really streams. Faults are injected from tests through the Python API (fail, slow, drop_stream,
vanish, api_key).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import posixpath
import re
import secrets
import signal
import tarfile
import threading
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import uvicorn
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from docker.utils.socket import frames_iter
from e2b.envd.process import process_pb
from e2b.envd.process.process_connect import Process, ProcessASGIApplication
from protobuf import Oneof
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.emulators.preview_proxy import edge_error, parse_preview_host, preview_proxy

ENVD_VERSION = "0.6.4"
OWNER_LABEL = "sandbox.platform/managed-by"
SANDBOX_LABEL = "e2b.emulator/sandbox-id"
# The longest sandbox timeout E2B accepts (Pro tier: 24 hours).
MAX_TIMEOUT_SECONDS = 24 * 3600
DEFAULT_TIMEOUT_SECONDS = 300
#: The sandbox domain this emulator plays (E2B's is e2b.app): `<port>-<sandbox id>.<domain>` reaches a port.
DOMAIN = "e2b-emulator.test"
# Output chunks the Docker reader may get ahead of the HTTP response.
STREAM_BUFFER_CHUNKS = 64

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Fault:
    """One injected fault: requests whose "METHOD path" matches `pattern` get it, `times` times (None: always)."""

    pattern: str
    times: int | None
    status: int = 0
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # For process streams: break the connection after this many output events.
    drop_after_events: int | None = None

    def matches(self, what: str) -> bool:
        return re.search(self.pattern, what) is not None and (self.times is None or self.times > 0)


@dataclass
class EmulatedSandbox:
    sandbox_id: str
    template_id: str
    container_id: str
    metadata: dict[str, str]
    started_at: datetime
    end_at: datetime
    cpu_count: int = 2
    memory_mb: int = 2048


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # E2B's Error model: {"code": int, "message": str} (e2b/api/client/models/error.py).
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


class E2BEmulator:
    """Start with start(), stop with stop(); `url` serves both the API and envd."""

    def __init__(self, docker_client: docker.DockerClient, owner: str, templates: dict[str, str]) -> None:
        self.api_key = "e2b_" + secrets.token_hex(20)
        self._docker = docker_client.api
        self._owner = owner
        self._templates = templates
        self._lock = threading.Lock()
        self._sandboxes: dict[str, EmulatedSandbox] = {}
        self._idempotency: dict[str, str] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._faults: list[Fault] = []
        self._pids = itertools.count(1000)
        self._processes: dict[tuple[str, int], str] = {}  # (sandbox, pid) -> docker exec id
        #: Every request seen, as "METHOD path" (tests assert what was, and was not, retried).
        self.requests: list[str] = []
        #: Process streams still open (a client that stops reading must release its stream).
        self.open_streams = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._app = self._build_app()

    # ---- test API ----------------------------------------------------------------------------------------

    def fail(self, pattern: str, status: int, times: int | None = 1, headers: dict[str, str] | None = None) -> None:
        """Answers matching requests ("METHOD /path") with `status` (5xx, 429, 401...)."""
        with self._lock:
            self._faults.append(Fault(pattern, times, status=status, headers=headers or {}))

    def slow(self, pattern: str, seconds: float, times: int | None = 1) -> None:
        """Delays matching requests by `seconds` before serving them."""
        with self._lock:
            self._faults.append(Fault(pattern, times, delay=seconds))

    def drop_stream(self, after_events: int, times: int | None = 1) -> None:
        """Breaks the connection of the next process stream(s) after that many output events."""
        with self._lock:
            self._faults.append(Fault(r"^POST /process\.Process/Start$", times, drop_after_events=after_events))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def vanish(self, sandbox_id: str) -> None:
        """The sandbox disappears behind the API's back (as when E2B's node loses it)."""
        self._kill(sandbox_id)

    def sandbox_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._sandboxes)

    def end_at(self, sandbox_id: str) -> datetime:
        with self._lock:
            return self._sandboxes[sandbox_id].end_at

    def count(self, pattern: str) -> int:
        return sum(1 for r in list(self.requests) if re.search(pattern, r))

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> E2BEmulator:
        # Long keep-alive: the SDK's pool keeps idle connections for 300 s, and a server that closes them
        # first races with requests the client writes on them.
        config = uvicorn.Config(
            preview_proxy(self._asgi, self._preview_route),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            timeout_keep_alive=600,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="e2b-emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the E2B emulator did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self._expire_forever, name="e2b-emulator-expiry", daemon=True).start()
        return self

    def stop(self) -> None:
        for sandbox_id in self.sandbox_ids():
            self._kill(sandbox_id)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _expire_forever(self) -> None:
        # E2B kills a sandbox when its timeout passes; so does the emulator. A sandbox whose container was
        # removed behind the emulator's back is gone too (as when a node is lost).
        while self._server is not None and not self._server.should_exit:
            now = datetime.now(UTC)
            # Only sandboxes registered before the listing can be missing from it.
            try:
                alive = {
                    c["Labels"].get(SANDBOX_LABEL)
                    for c in self._docker.containers(all=True, filters={"label": f"{OWNER_LABEL}={self._owner}"})
                }
            except docker.errors.DockerException:
                alive = None
            with self._lock:
                gone = [
                    s.sandbox_id
                    for s in self._sandboxes.values()
                    if s.end_at <= now or (alive is not None and s.sandbox_id not in alive and s.started_at < now)
                ]
            for sandbox_id in gone:
                self._kill(sandbox_id)
            time.sleep(0.5)

    def _kill(self, sandbox_id: str) -> bool:
        with self._lock:
            sandbox = self._sandboxes.pop(sandbox_id, None)
            for key in [k for k, v in self._idempotency.items() if v == sandbox_id]:
                del self._idempotency[key]
        if sandbox is None:
            return False
        with contextlib.suppress(docker.errors.NotFound):
            self._docker.remove_container(sandbox.container_id, force=True, v=True)
        return True

    # ---- HTTP ----------------------------------------------------------------------------------------------

    def _take_fault(self, what: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(what):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        what = f"{scope['method']} {scope['path']}"
        self.requests.append(what)
        fault = self._take_fault(what)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status:
            await _error(fault.status, "injected fault", fault.headers)(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if scope["path"] == "/files" or scope["path"].startswith("/process.Process/"):
            sandbox_id = headers.get("e2b-sandbox-id", "")
            with self._lock:
                known = sandbox_id in self._sandboxes
            if not known:
                # What E2B's edge proxy answers for a sandbox that is gone (e2b/exceptions.py).
                response = JSONResponse(
                    {"sandboxId": sandbox_id, "message": f"The sandbox {sandbox_id} was not found", "code": 502},
                    status_code=502,
                )
                await response(scope, receive, send)
                return
            if fault is not None and fault.drop_after_events is not None:
                # The start event, then that many output events, then the connection breaks.
                send = _dropping(send, fault.drop_after_events + 1)
            if scope["path"] == "/files":
                response = await self._files(sandbox_id, Request(scope, receive))
                await response(scope, receive, send)
            else:
                await self._envd(scope, receive, send)
            return
        if scope["path"] != "/health" and headers.get("x-api-key") != self.api_key:
            await _error(401, "Invalid API key")(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _preview_route(self, host: str, headers: dict[str, str]) -> int | Response | None:
        # E2B exposes every port of a sandbox (no declaration); public traffic needs no token.
        parsed = parse_preview_host(host, DOMAIN)
        if parsed is None:
            return None
        port, sandbox_id = parsed
        if self._lookup(sandbox_id) is None:
            return edge_error(502, f"The sandbox {sandbox_id} was not found")
        return port

    def _build_app(self) -> Starlette:
        self._envd = ProcessASGIApplication(_ProcessService(self))
        return Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/v2/sandboxes", self._create, methods=["POST"]),
                Route("/v2/sandboxes", self._list, methods=["GET"]),
                Route("/sandboxes/{sandbox_id}", self._get, methods=["GET"]),
                Route("/sandboxes/{sandbox_id}", self._delete, methods=["DELETE"]),
                Route("/sandboxes/{sandbox_id}/timeout", self._set_timeout, methods=["POST"]),
                Route("/v2/sandboxes/{sandbox_id}/connect", self._connect, methods=["POST"]),
            ]
        )

    def _lookup(self, sandbox_id: str) -> EmulatedSandbox | None:
        with self._lock:
            return self._sandboxes.get(sandbox_id)

    async def _health(self, request: Request) -> Response:
        sandbox_id = request.headers.get("e2b-sandbox-id", "")
        if self._lookup(sandbox_id) is None:
            return JSONResponse({"message": f"The sandbox {sandbox_id} was not found", "code": 502}, status_code=502)
        return Response(status_code=204)

    def _created(self, sandbox: EmulatedSandbox, status: int) -> JSONResponse:
        # e2b/api/client/models/sandbox.py
        body = {
            "templateID": sandbox.template_id,
            "sandboxID": sandbox.sandbox_id,
            "clientID": "emulator",
            "envdVersion": ENVD_VERSION,
            "domain": None,
        }
        return JSONResponse(body, status_code=status)

    def _listed(self, sandbox: EmulatedSandbox) -> dict[str, Any]:
        # e2b/api/client/models/listed_sandbox.py and sandbox_detail.py
        return {
            "templateID": sandbox.template_id,
            "sandboxID": sandbox.sandbox_id,
            "clientID": "emulator",
            "startedAt": _iso(sandbox.started_at),
            "endAt": _iso(sandbox.end_at),
            "envdVersion": ENVD_VERSION,
            "cpuCount": sandbox.cpu_count,
            "memoryMB": sandbox.memory_mb,
            "diskSizeMB": 10240,
            "state": "running",
            "metadata": sandbox.metadata,
        }

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        template = body.get("templateID", "")
        timeout = int(body.get("timeout", DEFAULT_TIMEOUT_SECONDS))
        if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            return _error(400, f"timeout must be between 1 and {MAX_TIMEOUT_SECONDS} seconds")
        metadata = body.get("metadata") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            return _error(400, "metadata values must be strings")
        image = self._templates.get(template)
        if image is None:
            return _error(404, f"template '{template}' not found")
        key = request.headers.get("idempotency-key")
        if key is None:
            return await self._create_sandbox(template, image, timeout, metadata, body)
        # Concurrent requests with one key make one sandbox; the others get it too.
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            with self._lock:
                existing = self._sandboxes.get(self._idempotency.get(key, ""))
            if existing is not None:
                return self._created(existing, 201)
            response = await self._create_sandbox(template, image, timeout, metadata, body)
            if response.status_code == 201:
                with self._lock:
                    self._idempotency[key] = json.loads(bytes(response.body))["sandboxID"]
            return response

    async def _create_sandbox(
        self, template: str, image: str, lifetime: int, metadata: dict[str, str], body: dict[str, Any]
    ) -> Response:
        sandbox_id = "i" + secrets.token_hex(10)
        network = "host" if body.get("allow_internet_access", True) is not False else "none"

        def make() -> str:
            host_config = self._docker.create_host_config(init=True, network_mode=network)
            created = self._docker.create_container(
                image=image,
                name=f"e2b-{sandbox_id}",
                labels={OWNER_LABEL: self._owner, SANDBOX_LABEL: sandbox_id},
                host_config=host_config,
                entrypoint=["sleep", "infinity"],
                command=[],
                environment=dict(body.get("envVars") or {}),
                detach=True,
            )
            container_id: str = created["Id"]
            try:
                self._docker.start(container_id)
            except BaseException:
                self._docker.remove_container(container_id, force=True)
                raise
            return container_id

        container_id = await asyncio.to_thread(make)
        now = datetime.now(UTC)
        sandbox = EmulatedSandbox(
            sandbox_id=sandbox_id,
            template_id=template,
            container_id=container_id,
            metadata=dict(metadata),
            started_at=now,
            end_at=datetime.fromtimestamp(now.timestamp() + lifetime, UTC),
        )
        with self._lock:
            self._sandboxes[sandbox_id] = sandbox
        return self._created(sandbox, 201)

    async def _get(self, request: Request) -> Response:
        sandbox = self._lookup(request.path_params["sandbox_id"])
        if sandbox is None:
            return _error(404, f"sandbox {request.path_params['sandbox_id']!r} doesn't exist or you don't have access")
        return JSONResponse(self._listed(sandbox))

    async def _list(self, request: Request) -> Response:
        # The SDK sends metadata as a query string of percent-encoded pairs, itself encoded once more
        # (e2b/sandbox_async/paginator.py).
        wanted = {
            urllib.parse.unquote(k): urllib.parse.unquote(v)
            for k, v in urllib.parse.parse_qsl(request.query_params.get("metadata", ""))
        }
        limit = int(request.query_params.get("limit", "100"))
        after = request.query_params.get("nextToken", "")
        with self._lock:
            matching = sorted(
                (s for s in self._sandboxes.values() if all(s.metadata.get(k) == v for k, v in wanted.items())),
                key=lambda s: s.sandbox_id,
            )
        page = [s for s in matching if s.sandbox_id > after][:limit]
        more = len([s for s in matching if s.sandbox_id > after]) > limit
        headers = {"X-Next-Token": page[-1].sandbox_id} if more and page else {}
        return JSONResponse([self._listed(s) for s in page], headers=headers)

    async def _delete(self, request: Request) -> Response:
        sandbox_id = request.path_params["sandbox_id"]
        if not await asyncio.to_thread(self._kill, sandbox_id):
            return _error(404, f'sandbox "{sandbox_id}" doesn\'t exist')
        return Response(status_code=204)

    async def _set_timeout(self, request: Request) -> Response:
        body = await request.json()
        timeout = int(body.get("timeout", 0))
        if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            return _error(400, f"timeout must be between 1 and {MAX_TIMEOUT_SECONDS} seconds")
        with self._lock:
            sandbox = self._sandboxes.get(request.path_params["sandbox_id"])
            if sandbox is not None:
                sandbox.end_at = datetime.fromtimestamp(time.time() + timeout, UTC)
        if sandbox is None:
            return _error(404, "sandbox not found")
        return Response(status_code=204)

    async def _connect(self, request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        with self._lock:
            sandbox = self._sandboxes.get(request.path_params["sandbox_id"])
            # Connecting never shortens a running sandbox's life, only extends it.
            if sandbox is not None and body.get("timeout"):
                extended = datetime.fromtimestamp(time.time() + int(body["timeout"]), UTC)
                sandbox.end_at = max(sandbox.end_at, extended)
        if sandbox is None:
            return _error(404, "sandbox not found")
        return self._created(sandbox, 200)

    # ---- envd processes ------------------------------------------------------------------------------------

    # ---- envd files ----------------------------------------------------------------------------------------

    async def _files(self, sandbox_id: str, request: Request) -> Response:
        """envd's POST /files (e2b/envd/api.py ENVD_API_FILES_ROUTE): a multipart upload whose `file` parts are
        named by their paths, or an octet-stream body for the `path` query parameter. Parent directories are
        created; the answer lists the entries written ({name, type, path}, as WriteInfo.from_dict reads)."""
        if request.method != "POST":
            return _error(405, "only uploads are emulated")
        user = request.query_params.get("username", "root")
        if user != "root":
            return _error(400, f"user {user!r} is not emulated (only root)")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            uploads = [
                (str(part.filename), await part.read()) for part in form.getlist("file") if not isinstance(part, str)
            ]
        else:
            uploads = [(request.query_params.get("path", ""), await request.body())]
        written = []
        for path, data in uploads:
            if not path.startswith("/"):
                return _error(400, f"path {path!r} must be absolute in the emulator")
            archive = io.BytesIO()
            with tarfile.open(fileobj=archive, mode="w") as tar:
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
            try:
                # The engine creates missing parent directories, as envd does.
                await asyncio.to_thread(
                    self._docker.put_archive, self.container_of(sandbox_id), "/", archive.getvalue()
                )
            except docker.errors.APIError as exc:
                return _error(400, f"cannot write {path}: {exc.explanation}")
            written.append({"name": posixpath.basename(path), "type": "file", "path": path})
        return JSONResponse(written)

    def container_of(self, sandbox_id: str) -> str:
        sandbox = self._lookup(sandbox_id)
        if sandbox is None:
            raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
        return sandbox.container_id

    def register(self, sandbox_id: str, exec_id: str) -> int:
        pid = next(self._pids)
        with self._lock:
            self._processes[(sandbox_id, pid)] = exec_id
        return pid

    def exec_of(self, sandbox_id: str, pid: int) -> str:
        with self._lock:
            exec_id = self._processes.get((sandbox_id, pid))
        if exec_id is None:
            raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
        return exec_id

    @property
    def docker_api(self) -> docker.APIClient:
        return self._docker


def _keepalive_interval(ctx: RequestContext[Any, Any]) -> float:
    try:
        return max(0.1, float(ctx.request_headers.get("keepalive-ping-interval", "50")))
    except ValueError:
        return 50.0


def _user_of(ctx: RequestContext[Any, Any]) -> str:
    """envd reads the user from HTTP basic auth, "user:" (e2b/envd/utils.py authentication_header)."""
    auth = ctx.request_headers.get("authorization", "")
    if auth.startswith("Basic "):
        return base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")[0]
    return "root"


class _ProcessService(Process):
    """The process.Process service of envd, over docker exec."""

    def __init__(self, emulator: E2BEmulator) -> None:
        self._emulator = emulator
        self._api = emulator.docker_api

    async def start(
        self, request: process_pb.StartRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[process_pb.StartResponse]:
        sandbox_id = ctx.request_headers.get("e2b-sandbox-id", "")
        container = self._emulator.container_of(sandbox_id)
        config = request.process or process_pb.ProcessConfig()
        argv = [config.cmd, *config.args]
        exec_id: str = (
            await asyncio.to_thread(
                self._api.exec_create,
                container,
                argv,
                stdout=True,
                stderr=True,
                environment=dict(config.envs) or None,
                workdir=config.cwd or None,
                user=_user_of(ctx),
            )
        )["Id"]
        sock: Any = await asyncio.to_thread(self._api.exec_start, exec_id, socket=True)
        pid = self._emulator.register(sandbox_id, exec_id)
        self._emulator.open_streams += 1
        try:
            async for response in self._follow(sock, exec_id, pid, _keepalive_interval(ctx)):
                yield response
        finally:
            self._emulator.open_streams -= 1

    async def _follow(
        self, sock: Any, exec_id: str, pid: int, keepalive: float
    ) -> AsyncIterator[process_pb.StartResponse]:
        yield process_pb.StartResponse(
            event=process_pb.ProcessEvent(event=Oneof("start", process_pb.ProcessEvent.StartEvent(pid=pid)))
        )
        frames = _frames(sock)
        pending: asyncio.Future[tuple[int, bytes]] | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(anext(frames))
                # envd sends a keepalive event after the interval the client asked for (Keepalive-Ping-Interval).
                done, _ = await asyncio.wait({pending}, timeout=keepalive)
                if not done:
                    keep = process_pb.ProcessEvent.KeepAlive()
                    yield process_pb.StartResponse(event=process_pb.ProcessEvent(event=Oneof("keepalive", keep)))
                    continue
                try:
                    fd, data = pending.result()
                except StopAsyncIteration:
                    break
                pending = None
                name = "stdout" if fd == 1 else "stderr"
                event = process_pb.ProcessEvent.DataEvent(output=Oneof(name, data))
                yield process_pb.StartResponse(event=process_pb.ProcessEvent(event=Oneof("data", event)))
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await frames.aclose()
        code = None
        for _ in range(100):
            code = (await asyncio.to_thread(self._api.exec_inspect, exec_id))["ExitCode"]
            if code is not None:
                break
            await asyncio.sleep(0.02)
        exit_code = code if code is not None else -1
        end = process_pb.ProcessEvent.EndEvent(
            exit_code=exit_code, exited=code is not None, status=f"exit status {exit_code}"
        )
        yield process_pb.StartResponse(event=process_pb.ProcessEvent(event=Oneof("end", end)))

    async def send_signal(
        self, request: process_pb.SendSignalRequest, ctx: RequestContext[Any, Any]
    ) -> process_pb.SendSignalResponse:
        sandbox_id = ctx.request_headers.get("e2b-sandbox-id", "")
        selector = request.process.selector if request.process else None
        pid = selector.value if isinstance(selector, Oneof) and selector.field == "pid" else -1
        exec_id = self._emulator.exec_of(sandbox_id, int(pid))
        host_pid = (await asyncio.to_thread(self._api.exec_inspect, exec_id))["Pid"]
        sig = signal.SIGKILL if request.signal == process_pb.Signal.SIGKILL else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(host_pid, sig)
        return process_pb.SendSignalResponse()


class _DroppedStream(Exception):
    """Raised out of the ASGI app mid-response: uvicorn then closes the connection without ending the body,
    which is what a client sees when the edge loses a stream."""


def _dropping(send: Send, messages: int) -> Send:
    sent = 0

    async def wrapped(message: MutableMapping[str, Any]) -> None:
        nonlocal sent
        if message["type"] == "http.response.body":
            if sent >= messages:
                raise _DroppedStream
            sent += 1
        await send(message)

    return wrapped


async def _frames(sock: Any) -> AsyncGenerator[tuple[int, bytes]]:
    """Demultiplexed docker exec output, read on a thread, with a bounded buffer (backpressure)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, bytes] | BaseException | None] = asyncio.Queue()
    slots = threading.Semaphore(STREAM_BUFFER_CHUNKS)
    stop = threading.Event()
    raw = getattr(sock, "_sock", sock)

    def deliver(item: tuple[int, bytes] | BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        try:
            for fd, data in frames_iter(sock, tty=False):
                while not slots.acquire(timeout=0.5):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                deliver((fd, data))
            deliver(None)
        except BaseException as exc:
            deliver(exc)

    threading.Thread(target=pump, name="e2b-emulator-exec", daemon=True).start()
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            slots.release()
            yield item
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            raw.shutdown(2)
        with contextlib.suppress(OSError):
            sock.close()
