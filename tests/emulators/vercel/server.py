"""A local emulator of the parts of Vercel's Sandbox REST API that the `vercel` SDK (vercel.sandbox) uses.

The routes, payload shapes and status codes follow the SDK's own client
(vercel/sandbox/_internal/api_client.py, log_stream.py, recovery.py, service.py) and Vercel's public docs:

  POST   v3/sandboxes                                   create (returns {sandbox, session, routes})
  any    https://<port>-<name>.<DOMAIN>/...             a declared port, through the emulated edge
  GET    v2/sandboxes/{name}[?resume=true]              read, or resume a stopped sandbox
  GET    v2/sandboxes?tags=key:value&sortBy=name...     query, paginated by an opaque cursor
  DELETE v2/sandboxes/{name}                            destroy
  POST   v2/sandboxes/sessions/{sid}/stop               stop the session (the filesystem stays)
  POST   v2/sandboxes/sessions/{sid}/extend-timeout     lengthen the session ({duration} in ms)
  POST   v2/sandboxes/sessions/{sid}/cmd                start a detached command
  GET    v2/sandboxes/sessions/{sid}/cmd/{cid}[?wait]   read (or wait for) a command
  GET    v2/sandboxes/sessions/{sid}/cmd/{cid}/logs     NDJSON {"stream","data"} records, replayed from the start
  POST   v2/sandboxes/sessions/{sid}/fs/write           a tar.gz extracted at x-cwd

Every sandbox session is a real Docker container (host networking, or none for a deny-all network policy)
and every command a real `docker exec` whose output is captured as it comes, so log readers can join at
any time and any number of times. Output is text on the wire, as on Vercel: bytes are decoded as UTF-8.

Faults are injected on demand through `Emulator.faults` (a Python API; tests run the emulator in-process).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import gzip
import json
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.emulators.preview_proxy import edge_error, parse_preview_host, preview_host, preview_proxy

OWNER_LABEL = "sandbox.platform/managed-by"
SANDBOX_LABEL = "vercel-emulator/sandbox"
DEFAULT_IMAGE = "sandbox-base:bookworm-2"
# Vercel documents at most five tags per sandbox, and sessions of at most 5 hours (Pro/Enterprise).
MAX_TAGS = 5
MAX_SESSION_MS = 5 * 3600 * 1000
DEFAULT_SESSION_MS = 5 * 60 * 1000
MAX_PAGE = 50
# Vercel exposes at most 15 ports per sandbox, each at https://<subdomain>.vercel.run; this emulator's edge
# answers for <port>-<name>.<DOMAIN> instead.
MAX_PORTS = 15
DOMAIN = "vercel-emulator.test"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@dataclass
class Fault:
    """One injected fault, matched against the request's method and path (a regex searched in the path)."""

    path: str = ""
    method: str = ""
    status: int = 0  # answer with this status instead of serving the request
    code: str = "injected"
    delay: float = 0.0  # wait this long first
    drop_after_bytes: int = -1  # for log streams: cut the connection after this many bytes
    times: int = 1  # how many requests it hits; -1 for every one
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (not self.method or self.method == method) and re.search(self.path, path) is not None


@dataclass
class Command:
    id: str
    session_id: str
    name: str
    args: list[str]
    cwd: str
    started_at: int
    exit_code: int | None = None
    exec_id: str = ""
    lost: bool = False  # the sandbox went away while it ran
    records: list[bytes] = field(default_factory=list)  # NDJSON lines, newline included
    done: threading.Event = field(default_factory=threading.Event)

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "args": self.args,
            "cwd": self.cwd,
            "sessionId": self.session_id,
            "exitCode": self.exit_code,
            "startedAt": self.started_at,
        }


@dataclass
class Session:
    id: str
    sandbox: str
    project_id: str
    timeout_ms: int
    vcpus: int
    memory: int
    requested_at: int
    started_at: int
    status: str = "running"
    stopped_at: int | None = None
    commands: dict[str, Command] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sourceSandboxName": self.sandbox,
            "projectId": self.project_id,
            "status": self.status,
            "cwd": "/",
            "region": "iad1",
            "memory": self.memory,
            "vcpus": self.vcpus,
            "timeout": self.timeout_ms,
            "requestedAt": self.requested_at,
            "startedAt": self.started_at,
            "stoppedAt": self.stopped_at,
        }


@dataclass
class Sandbox:
    name: str
    project_id: str
    image: str
    tags: dict[str, str]
    env: dict[str, str]
    vcpus: int
    memory: int
    timeout_ms: int
    deny_network: bool
    created_at: int
    ports: list[int] = field(default_factory=list)
    session_id: str = ""
    container: str = ""
    status: str = "pending"

    def payload(self, session: Session | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "currentSessionId": self.session_id,
            "image": self.image,
            "status": session.status if session else self.status,
            "persistent": True,
            "projectId": self.project_id,
            "cwd": "/",
            "region": "iad1",
            "memory": self.memory,
            "vcpus": self.vcpus,
            "timeout": self.timeout_ms,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "statusUpdatedAt": self.created_at,
            "tags": self.tags,
        }

    def routes(self) -> list[dict[str, Any]]:
        # {url, port, subdomain} as vercel/sandbox/_internal/api_client.py's _SandboxRoutePayload reads them.
        hosts = {port: preview_host(port, self.name, DOMAIN) for port in self.ports}
        return [
            {"url": f"https://{host}", "port": port, "subdomain": host.split(".")[0]} for port, host in hosts.items()
        ]


class Emulator:
    """State and routes of the emulated API; `app` is the ASGI application."""

    def __init__(self, owner: str, docker_client: docker.DockerClient, token: str, team_id: str, project_id: str):
        self.owner = owner
        self.api: docker.APIClient = docker_client.api
        self.token = token
        self.team_id = team_id
        self.project_id = project_id
        self.sandboxes: dict[str, Sandbox] = {}
        self.sessions: dict[str, Session] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.app = preview_proxy(Starlette(routes=self._routes()), self._preview_route)

    # -- fault injection -------------------------------------------------------------------------------------

    def inject(self, **kwargs: Any) -> Fault:
        fault = Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def _fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path) and (fault.times < 0 or fault.hits < fault.times):
                fault.hits += 1
                return fault
        return None

    def vanish(self, name: str) -> None:
        """The sandbox disappears behind the SDK's back (as if destroyed from the dashboard)."""
        sandbox = self.sandboxes[name]
        self._remove_container(sandbox)
        self.sandboxes.pop(name, None)

    def live_sandboxes(self) -> list[str]:
        return sorted(self.sandboxes)

    def destroy_all(self) -> None:
        for name in list(self.sandboxes):
            self.vanish(name)

    # -- plumbing ------------------------------------------------------------------------------------------

    def _preview_route(self, host: str, headers: dict[str, str]) -> int | Response | None:
        parsed = parse_preview_host(host, DOMAIN)
        if parsed is None:
            return None
        port, name = parsed
        sandbox = self.sandboxes.get(name)
        # Only the ports declared at creation have routes.
        if sandbox is None or port not in sandbox.ports:
            return edge_error(404, f"no route for {host}")
        return port

    def _routes(self) -> list[Route]:
        p = "/v2/sandboxes"
        s = f"{p}/sessions/{{sid}}"
        return [
            Route("/v3/sandboxes", self._wrap(self.create), methods=["POST"]),
            Route(p, self._wrap(self.query), methods=["GET"]),
            Route(f"{s}/stop", self._wrap(self.stop_session), methods=["POST"]),
            Route(f"{s}/extend-timeout", self._wrap(self.extend), methods=["POST"]),
            Route(f"{s}/cmd", self._wrap(self.run), methods=["POST"]),
            Route(f"{s}/cmd/{{cid}}", self._wrap(self.get_command), methods=["GET"]),
            Route(f"{s}/cmd/{{cid}}/logs", self._wrap(self.logs), methods=["GET"]),
            Route(f"{s}/cmd/{{cid}}/kill", self._wrap(self.kill), methods=["POST"]),
            Route(f"{s}/fs/write", self._wrap(self.write_files), methods=["POST"]),
            Route(f"{p}/sessions/{{sid}}", self._wrap(self.get_session), methods=["GET"]),
            Route(f"{p}/{{name}}", self._wrap(self.get), methods=["GET"]),
            Route(f"{p}/{{name}}", self._wrap(self.destroy), methods=["DELETE"]),
        ]

    def _wrap(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            self.requests.append((request.method, request.url.path))
            fault = self._fault(request.method, request.url.path)
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault is not None and fault.status:
                return _error(fault.status, fault.code, f"injected fault {fault.status}")
            auth = request.headers.get("authorization", "")
            if not auth:
                return _error(401, "unauthorized", "Missing authorization token")
            if auth != f"Bearer {self.token}" or request.query_params.get("teamId") != self.team_id:
                return _error(403, "forbidden", "Not authorized")
            if fault is not None and fault.drop_after_bytes >= 0:
                request.state.drop_after = fault.drop_after_bytes
            response: Response = await handler(request)
            return response

        return endpoint

    def _session(self, request: Request) -> Session | Response:
        session = self.sessions.get(request.path_params["sid"])
        if session is None or session.sandbox not in self.sandboxes:
            return _error(404, "not_found", "Session not found")
        self._expire(session)
        if session.status != "running":
            return _error(410, "sandbox_stopped", "The sandbox session is stopped")
        return session

    def _expire(self, session: Session) -> None:
        """Sessions stop by themselves when their timeout runs out, as on Vercel."""
        if session.status == "running" and _now_ms() >= session.started_at + session.timeout_ms:
            self._stop(session)

    def watch(self, stop: threading.Event) -> None:
        """Stops sessions whose timeout ran out, also while nobody calls the API (runs in a thread)."""
        while not stop.wait(0.25):
            for session in list(self.sessions.values()):
                with contextlib.suppress(Exception):
                    self._expire(session)

    @staticmethod
    def _lose_commands(session: Session | None) -> None:
        """Commands still running when their session ends never finish: decided before the container goes,
        so no race with Docker's teardown makes them look finished."""
        for command in session.commands.values() if session else ():
            if not command.done.is_set():
                command.lost = True

    def _stop(self, session: Session) -> None:
        self._lose_commands(session)
        session.status = "stopped"
        session.stopped_at = _now_ms()
        sandbox = self.sandboxes.get(session.sandbox)
        if sandbox is not None and sandbox.container:
            with contextlib.suppress(docker.errors.NotFound):
                self.api.stop(sandbox.container, timeout=0)

    def _remove_container(self, sandbox: Sandbox) -> None:
        self._lose_commands(self.sessions.get(sandbox.session_id))
        if sandbox.container:
            try:
                self.api.remove_container(sandbox.container, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as err:
                if err.status_code != 409:
                    raise
                # Another request is removing it: return once it is gone.
                for _ in range(200):
                    try:
                        self.api.inspect_container(sandbox.container)
                    except docker.errors.NotFound:
                        break
                    time.sleep(0.05)
        session = self.sessions.get(sandbox.session_id)
        if session is not None:
            session.status = "stopped"

    def _start_container(self, sandbox: Sandbox) -> None:
        host_config = self.api.create_host_config(
            init=True,
            network_mode="none" if sandbox.deny_network else "host",
            nano_cpus=sandbox.vcpus * 1_000_000_000,
        )
        created = self.api.create_container(
            image=sandbox.image,
            name=f"vercel-{sandbox.name}-{uuid.uuid4().hex[:6]}",
            labels={OWNER_LABEL: self.owner, SANDBOX_LABEL: sandbox.name},
            host_config=host_config,
            entrypoint=["sleep", "infinity"],
            command=[],
            environment=sandbox.env,
            detach=True,
        )
        sandbox.container = created["Id"]
        self.api.start(sandbox.container)

    def _new_session(self, sandbox: Sandbox) -> Session:
        now = _now_ms()
        session = Session(
            id=f"sbs_{uuid.uuid4().hex[:20]}",
            sandbox=sandbox.name,
            project_id=sandbox.project_id,
            timeout_ms=sandbox.timeout_ms,
            vcpus=sandbox.vcpus,
            memory=sandbox.memory,
            requested_at=now,
            started_at=now,
        )
        self.sessions[session.id] = session
        sandbox.session_id = session.id
        sandbox.status = "running"
        return session

    def _sandbox_response(self, sandbox: Sandbox, status: int = 200) -> JSONResponse:
        session = self.sessions.get(sandbox.session_id)
        body = {
            "sandbox": sandbox.payload(session),
            "session": session.payload() if session else None,
            "routes": sandbox.routes(),
        }
        return JSONResponse(body, status_code=status)

    # -- sandboxes -----------------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        body = await request.json()
        if body.get("projectId") != self.project_id:
            return _error(404, "project_not_found", "Project not found")
        tags = body.get("tags") or {}
        if len(tags) > MAX_TAGS:
            return _error(400, "bad_request", f"A sandbox supports at most {MAX_TAGS} tags")
        timeout = int(body.get("timeout") or DEFAULT_SESSION_MS)
        if timeout > MAX_SESSION_MS:
            return _error(400, "bad_request", "timeout exceeds the maximum session duration")
        resources = body.get("resources") or {}
        vcpus = int(resources.get("vcpus") or 2)
        name = body.get("name") or f"sbx_{uuid.uuid4().hex[:20]}"
        policy = body.get("networkPolicy") or {}
        ports = [int(port) for port in body.get("ports") or []]
        if len(ports) > MAX_PORTS or any(not 1 <= port <= 65535 for port in ports):
            return _error(400, "bad_request", f"ports must hold at most {MAX_PORTS} ports from 1 to 65535")
        sandbox = Sandbox(
            name=name,
            project_id=self.project_id,
            image=body.get("image") or DEFAULT_IMAGE,
            tags=dict(tags),
            env=dict(body.get("env") or {}),
            vcpus=vcpus,
            memory=int(resources.get("memory") or vcpus * 2048),
            timeout_ms=timeout,
            deny_network=policy.get("mode") == "deny-all",
            created_at=_now_ms(),
            ports=ports,
        )
        with self._lock:
            # Names are unique in a project: the second create of a name conflicts, even mid-creation.
            if name in self.sandboxes:
                return _error(409, "sandbox_already_exists", f"A sandbox named {name!r} already exists")
            self.sandboxes[name] = sandbox
        try:
            await asyncio.to_thread(self._start_container, sandbox)
        except docker.errors.ImageNotFound:
            self.sandboxes.pop(name, None)
            return _error(400, "image_not_found", f"Image {sandbox.image!r} not found")
        except BaseException:
            self.sandboxes.pop(name, None)
            await asyncio.to_thread(self._remove_container, sandbox)
            raise
        self._new_session(sandbox)
        return self._sandbox_response(sandbox, 201)

    async def get(self, request: Request) -> Response:
        sandbox = self.sandboxes.get(request.path_params["name"])
        if sandbox is None:
            return _error(404, "not_found", "Sandbox not found")
        session = self.sessions.get(sandbox.session_id)
        if session is not None:
            self._expire(session)
        if request.query_params.get("resume") == "true" and (session is None or session.status != "running"):
            # Resuming starts a new session on the same filesystem (the stopped container).
            await asyncio.to_thread(self.api.start, sandbox.container)
            self._new_session(sandbox)
        return self._sandbox_response(sandbox)

    async def query(self, request: Request) -> Response:
        q = request.query_params
        if q.get("project") != self.project_id:
            return _error(404, "project_not_found", "Project not found")
        found = list(self.sandboxes.values())
        if tag := q.get("tags"):
            key, _, value = tag.partition(":")
            found = [s for s in found if s.tags.get(key) == value]
        if prefix := q.get("namePrefix"):
            found = [s for s in found if s.name.startswith(prefix)]
        if q.get("sortBy", "createdAt") == "name":
            found.sort(key=lambda s: s.name, reverse=q.get("sortOrder", "desc") == "desc")
        else:
            found.sort(key=lambda s: (s.created_at, s.name), reverse=q.get("sortOrder", "desc") == "desc")
        start = int(q.get("cursor") or 0)
        limit = min(int(q.get("limit") or 50), MAX_PAGE)
        page = found[start : start + limit]
        following = str(start + limit) if start + limit < len(found) else None
        for sandbox in page:
            if session := self.sessions.get(sandbox.session_id):
                self._expire(session)
        return JSONResponse(
            {
                "sandboxes": [s.payload(self.sessions.get(s.session_id)) for s in page],
                "pagination": {"count": len(page), "next": following, "prev": None},
            }
        )

    async def destroy(self, request: Request) -> Response:
        sandbox = self.sandboxes.get(request.path_params["name"])
        if sandbox is None:
            return _error(404, "not_found", "Sandbox not found")
        # The container goes first, so a sandbox the API no longer lists has no container left either.
        await asyncio.to_thread(self._remove_container, sandbox)
        with self._lock:
            if self.sandboxes.get(sandbox.name) is sandbox:
                del self.sandboxes[sandbox.name]
        return self._sandbox_response(sandbox)

    # -- sessions ------------------------------------------------------------------------------------------

    async def get_session(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["sid"])
        if session is None:
            return _error(404, "not_found", "Session not found")
        self._expire(session)
        sandbox = self.sandboxes.get(session.sandbox)
        return JSONResponse({"session": session.payload(), "routes": sandbox.routes() if sandbox else []})

    async def stop_session(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["sid"])
        if session is None:
            return _error(404, "not_found", "Session not found")
        if session.status == "running":
            await asyncio.to_thread(self._stop, session)
        return JSONResponse({"session": session.payload()})

    async def extend(self, request: Request) -> Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        duration = int((await request.json()).get("duration") or 0)
        if duration < 1000:
            return _error(400, "bad_request", "duration must be at least one second")
        if session.timeout_ms + duration > MAX_SESSION_MS:
            return _error(400, "sandbox_timeout_exceeded", "the session would exceed the maximum duration")
        session.timeout_ms += duration
        return JSONResponse({"session": session.payload()})

    # -- commands ------------------------------------------------------------------------------------------

    async def run(self, request: Request) -> Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        body = await request.json()
        sandbox = self.sandboxes[session.sandbox]
        argv = [body["command"], *(body.get("args") or [])]
        exec_id = (
            await asyncio.to_thread(
                self.api.exec_create,
                sandbox.container,
                argv,
                stdout=True,
                stderr=True,
                environment=body.get("env") or None,
                workdir=body.get("cwd") or None,
            )
        )["Id"]
        command = Command(
            id=f"cmd_{uuid.uuid4().hex[:20]}",
            session_id=session.id,
            name=body["command"],
            args=list(body.get("args") or []),
            cwd=body.get("cwd") or "/",
            started_at=_now_ms(),
            exec_id=exec_id,
        )
        session.commands[command.id] = command
        threading.Thread(target=self._pump, args=(exec_id, command, sandbox.container), daemon=True).start()
        if request.query_params.get("wait") == "true" and request.query_params.get("logs") == "true":
            # run_process: one NDJSON stream of the started command, its logs, then the finished command.
            async def body() -> AsyncIterator[bytes]:
                yield (json.dumps({"command": command.payload()}) + "\n").encode()
                async for chunk in self._follow(command, -1, session):
                    yield chunk
                yield (json.dumps({"command": command.payload()}) + "\n").encode()

            return StreamingResponse(body(), media_type="application/x-ndjson")
        return JSONResponse({"command": command.payload()})

    def _pump(self, exec_id: str, command: Command, container: str) -> None:
        """Captures a command's output as it comes; log readers replay it from the start."""
        decoders = {n: codecs.getincrementaldecoder("utf-8")(errors="replace") for n in ("stdout", "stderr")}
        try:
            for out, err in self.api.exec_start(exec_id, stream=True, demux=True):
                for stream, data in (("stdout", out), ("stderr", err)):
                    if data:
                        text = decoders[stream].decode(data)
                        if text:
                            command.records.append((json.dumps({"stream": stream, "data": text}) + "\n").encode())
            code = self.api.exec_inspect(exec_id)["ExitCode"]
            if not self.api.inspect_container(container)["State"]["Running"]:
                code = None  # the session stopped under the command
        except Exception:
            code = None  # the container went away under the command
        command.lost = command.lost or code is None
        command.exit_code = 255 if code is None else code
        command.done.set()

    def _command(self, request: Request) -> Command | Response:
        session = self.sessions.get(request.path_params["sid"])
        if session is None or session.sandbox not in self.sandboxes:
            return _error(404, "not_found", "Session not found")
        command = session.commands.get(request.path_params["cid"])
        if command is None:
            return _error(404, "not_found", "Command not found")
        return command

    async def get_command(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        if request.query_params.get("wait") == "true":
            await asyncio.to_thread(command.done.wait)
        return JSONResponse({"command": command.payload()})

    async def kill(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        signal = int((await request.json()).get("signal") or 15)
        if not command.done.is_set():
            # The exec's process runs on this host: signal it by its host pid.
            pid = (await asyncio.to_thread(self.api.exec_inspect, command.exec_id)).get("Pid") or 0
            if pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal)
        return JSONResponse({"command": command.payload()})

    async def logs(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        drop_after: int = getattr(request.state, "drop_after", -1)
        return StreamingResponse(
            self._follow(command, drop_after, self.sessions[command.session_id]), media_type="application/x-ndjson"
        )

    async def _follow(self, command: Command, drop_after: int, session: Session) -> AsyncIterator[bytes]:
        """A command's log records from the start, following live until it ends."""
        sent = index = 0
        while True:
            done = command.done.is_set()
            batch = command.records[index:]
            if batch:
                index += len(batch)
                chunk = b"".join(batch)
                if 0 <= drop_after < sent + len(chunk):
                    yield chunk[: max(drop_after - sent, 0)]
                    raise ConnectionAbortedError("injected: log stream dropped")
                sent += len(chunk)
                yield chunk
            elif done and not command.lost:
                return
            elif command.lost or session.sandbox not in self.sandboxes or session.status != "running":
                # The sandbox went away while the command ran: the API reports it in-band.
                error = {"code": "sandbox_stopped", "message": "The sandbox stopped"}
                yield (json.dumps({"stream": "error", "data": error}) + "\n").encode()
                return
            else:
                await asyncio.sleep(0.02)

    # -- files ---------------------------------------------------------------------------------------------

    async def write_files(self, request: Request) -> Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        archive = gzip.decompress(await request.body())
        sandbox = self.sandboxes[session.sandbox]
        await asyncio.to_thread(self.api.put_archive, sandbox.container, request.headers.get("x-cwd", "/"), archive)
        return JSONResponse({})


class EmulatorServer:
    """Serves an Emulator with uvicorn on 127.0.0.1, port chosen by the kernel, in a background thread."""

    def __init__(self, emulator: Emulator) -> None:
        import uvicorn

        self.emulator = emulator
        config = uvicorn.Config(emulator.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="vercel-emulator", daemon=True)
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=emulator.watch, args=(self._stopping,), daemon=True)
        self.url = ""

    def start(self) -> EmulatorServer:
        self._thread.start()
        self._watcher.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Vercel emulator did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._stopping.set()
        self._thread.join(timeout=10)
        self._watcher.join(timeout=10)
        self.emulator.destroy_all()
