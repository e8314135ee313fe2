"""A local emulator of the parts of Daytona's REST API and toolbox API that the `daytona` SDK (0.226.1) uses.

Derived from the SDK's generated clients (daytona_api_client_async/api/sandbox_api.py,
daytona_toolbox_api_client_async/api/process_api.py) and their models, which follow Daytona's public OpenAPI
specs. Each sandbox is a real Docker container; session commands really run (docker exec) and their output
really streams over the logs WebSocket, framed the way the daemon frames it (STDOUT_PREFIX b"\\x01\\x01\\x01",
STDERR_PREFIX b"\\x02\\x02\\x02", daytona/common/process.py).

Routes (API base http://127.0.0.1:PORT/api, toolbox base http://127.0.0.1:PORT/toolbox, which the SDK suffixes
with /{sandboxId} (daytona/internal/toolbox_api_client_proxy.py)):

  POST   /api/sandbox                       create (409 when the name is taken, as names are unique)
  GET    /api/sandbox                       list, `labels` is a JSON object, cursor pagination
  GET    /api/sandbox/{idOrName}            read
  DELETE /api/sandbox/{idOrName}            destroy
  GET    /api/sandbox/{id}/toolbox-proxy-url
  GET    /api/sandbox/{id}/ports/{port}/preview-url        https://<port>-<id>.<DOMAIN> and the preview token
  any    https://<port>-<id>.<DOMAIN>/...                  the port, through the emulated edge (token or API key
                                                           needed unless the sandbox is public)
  POST   /toolbox/{id}/process/session                     create a session
  POST   /toolbox/{id}/process/session/{sid}/exec          run a command (runAsync)
  GET    /toolbox/{id}/process/session/{sid}/command/{cid} the command and its exit code
  WS     /toolbox/{id}/process/session/{sid}/command/{cid}/logs?follow=true
  DELETE /toolbox/{id}/process/session/{sid}               kills the session's commands
  POST   /toolbox/{id}/files/bulk-upload                   multipart files[i].path + files[i].file
  POST   /toolbox/{id}/git/clone                           real git clone (branch, depth), credentials per call
  GET    /toolbox/{id}/git/branches                        local branches
  POST   /toolbox/{id}/git/branches                        create a branch
  POST   /toolbox/{id}/git/checkout                        check a branch out
  GET    /toolbox/{id}/git/status                          current branch and changed files
  POST   /toolbox/{id}/git/add                             stage files
  POST   /toolbox/{id}/git/commit                          commit as the given author, returns the hash
  POST   /toolbox/{id}/git/push                            real git push, credentials for this call only

Faults are injected from the test process with `inject()` (see Fault) and `vanish()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import secrets
import signal
import socket
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import uvicorn
from docker.utils.socket import frames_iter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.emulators.preview_proxy import edge_error, parse_preview_host, preview_host, preview_proxy

OWNER_LABEL = "sandbox.platform/managed-by"
ID_LABEL = "daytona.emulator/id"
STDOUT_PREFIX = b"\x01\x01\x01"
STDERR_PREFIX = b"\x02\x02\x02"
ORGANIZATION = "org-emulated"
#: The preview domain this emulator plays (Daytona's cloud uses proxy.daytona.works).
DOMAIN = "daytona-emulator.test"
PREVIEW_TOKEN_HEADER = "x-daytona-preview-token"
# The daemon's git routes, over real git in the container. Credentials live only in the git process's
# environment, read by a helper given on the command line; git runs as the checkout's owner, as the daemon
# runs as the sandbox user.
GIT_SCRIPT = r"""
op=$1; shift
helper='!f() { test "$1" = get && echo "username=$GIT_USER" && echo "password=$GIT_PASS"; }; f'
export GIT_TERMINAL_PROMPT=0
# The daemon's git library has no "dubious ownership" check; the CLI standing in for it must not apply one.
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'
as_owner() {
  owner=$(stat -c %U "$1/.git" 2>/dev/null || stat -c %U "$1"); shift
  if [ "$owner" != root ] && [ "$(id -u)" = 0 ]; then runuser -u "$owner" -- "$@"; else "$@"; fi
}
case $op in
  clone)
    url=$1 path=$2 branch=$3 depth=$4 args=()
    [ -n "$branch" ] && args+=(--branch "$branch")
    [ "$depth" -gt 0 ] && args+=(--depth "$depth")
    git -c credential.helper= -c "credential.helper=$helper" clone -q "${args[@]}" -- "$url" "$path" ;;
  branches) as_owner "$1" git -C "$1" for-each-ref --format='%(refname:short)' refs/heads ;;
  create-branch) as_owner "$1" git -C "$1" branch "$2" ;;
  checkout) as_owner "$1" git -C "$1" checkout -q "$2" -- ;;
  status)
    as_owner "$1" git -C "$1" symbolic-ref --short HEAD
    as_owner "$1" git -C "$1" status --porcelain=v1 --untracked-files=all ;;
  add) path=$1; shift; as_owner "$path" git -C "$path" add -- "$@" ;;
  commit)
    path=$1 message=$2 author=$3 email=$4 empty=$5
    as_owner "$path" git -C "$path" -c user.name="$author" -c user.email="$email" \
      commit -q ${empty:+--allow-empty} -m "$message"
    as_owner "$path" git -C "$path" rev-parse HEAD ;;
  push)
    path=$1 remote=$2 branch=$3
    [ -n "$branch" ] || branch=$(as_owner "$path" git -C "$path" symbolic-ref --short HEAD)
    as_owner "$path" git -C "$path" -c credential.helper= -c "credential.helper=$helper" \
      push -q "$remote" "$branch:refs/heads/$branch" ;;
esac
"""


# git status --porcelain letters as the toolbox's Status values (daytona_toolbox_api_client_async/models/status.py).
_STATUS = {
    " ": "Unmodified",
    "?": "Untracked",
    "M": "Modified",
    "A": "Added",
    "D": "Deleted",
    "R": "Renamed",
    "C": "Copied",
    "U": "Updated but unmerged",
}


def _git_error(message: str) -> tuple[int, str]:
    """The daemon's status and error code for a failed git operation, from git's own message."""
    if "rejected" in message or "pre-receive hook declined" in message:
        return 409, "GIT_PUSH_REJECTED"
    if "Authentication failed" in message or "could not read Username" in message or "403" in message:
        return 401, "GIT_AUTH_FAILED"
    if "Remote branch" in message and "not found" in message:
        return 404, "GIT_BRANCH_NOT_FOUND"
    if "already exists" in message and "branch" in message:
        return 409, "GIT_BRANCH_EXISTS"
    if "not found" in message or "does not appear to be a git repository" in message:
        return 404, "GIT_REPO_NOT_FOUND"
    return 400, "GIT_TRANSPORT_FAILED"


@dataclass
class Fault:
    """One injected fault. `path` is a regex searched in "METHOD /path" (e.g. "POST /api/sandbox$").

    status: answer with this HTTP status instead of serving the request.
    delay: sleep this long before serving it.
    close_ws_after: (logs WebSocket) close with code 1011 after this many output bytes.
    times: how many matching requests it affects (then it is removed); -1 for all.
    """

    path: str
    status: int = 0
    delay: float = 0.0
    close_ws_after: int = -1
    times: int = 1
    hits: int = 0


@dataclass
class Command:
    id: str
    command: str
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    exit_code: int | None = None
    done: bool = False
    pid: int = 0
    watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, frame: tuple[int, bytes] | None, exit_code: int | None = None) -> None:
        with self.lock:
            if frame is not None:
                self.frames.append(frame)
            else:
                self.exit_code = exit_code
                self.done = True
            watchers = list(self.watchers)
        for loop, event in watchers:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)


@dataclass
class Sandbox:
    dto: dict[str, Any]
    container: str
    sessions: dict[str, dict[str, Command]] = field(default_factory=dict)
    preview_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str) -> JSONResponse:
    # The shape of Daytona's error envelope (statusCode/message/error), parsed by daytona/_utils/errors.py.
    names = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 409: "Conflict", 429: "Too Many Requests"}
    return JSONResponse(
        {"statusCode": status, "message": message, "error": names.get(status, "Internal Server Error")},
        status_code=status,
    )


class DaytonaEmulator:
    def __init__(self, owner: str, docker_client: docker.DockerClient, api_key: str = "emulated-daytona-key") -> None:
        self.owner = owner
        self.api_key = api_key
        self._docker = docker_client.api
        self._sandboxes: dict[str, Sandbox] = {}
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.requests: list[str] = []

    # ----- test-side API -----

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def vanish(self, sandbox_id: str) -> None:
        """The sandbox disappears behind the API's back (its container removed, its record dropped)."""
        with self._lock:
            sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self._docker.remove_container(sandbox.container, force=True)

    def sandbox_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._sandboxes)

    def sandbox(self, sandbox_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._sandboxes[sandbox_id].dto)

    def session_commands(self, sandbox_id: str) -> list[str]:
        """Every command string still held in the sandbox's sessions."""
        with self._lock:
            sandbox = self._sandboxes.get(sandbox_id)
            return [c.command for s in (sandbox.sessions.values() if sandbox else []) for c in s.values()]

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", ws_max_size=64 << 20, ws_ping_interval=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the Daytona emulator did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        for sandbox_id in self.sandbox_ids():
            self.vanish(sandbox_id)

    # ----- the app -----

    def app(self) -> ASGIApp:
        routes = [
            Route("/api/sandbox", self._create, methods=["POST"]),
            Route("/api/sandbox", self._list, methods=["GET"]),
            Route("/api/sandbox/{sid}", self._get, methods=["GET"]),
            Route("/api/sandbox/{sid}", self._delete, methods=["DELETE"]),
            Route("/api/sandbox/{sid}/toolbox-proxy-url", self._proxy_url, methods=["GET"]),
            Route("/api/sandbox/{sid}/ports/{port:int}/preview-url", self._preview_url, methods=["GET"]),
            Route("/toolbox/{sid}/process/session", self._create_session, methods=["POST"]),
            Route("/toolbox/{sid}/process/session/{session}", self._delete_session, methods=["DELETE"]),
            Route("/toolbox/{sid}/process/session/{session}/exec", self._exec, methods=["POST"]),
            Route("/toolbox/{sid}/process/session/{session}/command/{cmd}", self._command, methods=["GET"]),
            WebSocketRoute("/toolbox/{sid}/process/session/{session}/command/{cmd}/logs", self._logs),
            Route("/toolbox/{sid}/git/clone", self._git_clone, methods=["POST"]),
            Route("/toolbox/{sid}/git/branches", self._git_branches, methods=["GET"]),
            Route("/toolbox/{sid}/git/branches", self._git_create_branch, methods=["POST"]),
            Route("/toolbox/{sid}/git/checkout", self._git_checkout, methods=["POST"]),
            Route("/toolbox/{sid}/git/status", self._git_status, methods=["GET"]),
            Route("/toolbox/{sid}/git/add", self._git_add, methods=["POST"]),
            Route("/toolbox/{sid}/git/commit", self._git_commit, methods=["POST"]),
            Route("/toolbox/{sid}/git/push", self._git_push, methods=["POST"]),
            Route("/toolbox/{sid}/files/bulk-upload", self._upload, methods=["POST"]),
        ]
        return preview_proxy(self._middleware(Starlette(routes=routes)), self._preview_route)

    def _preview_route(self, host: str, headers: dict[str, str]) -> int | Response | None:
        parsed = parse_preview_host(host, DOMAIN)
        if parsed is None:
            return None
        port, sid = parsed
        sandbox = self._find(sid)
        if sandbox is None:
            return edge_error(404, f"sandbox {sid} not found")
        allowed = (
            sandbox.dto["public"]
            or headers.get(PREVIEW_TOKEN_HEADER) == sandbox.preview_token
            or headers.get("authorization") == f"Bearer {self.api_key}"
        )
        return port if allowed else edge_error(401, "Unauthorized: a preview token or an API key is required")

    def _match_fault(self, what: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if re.search(fault.path, what):
                    fault.hits += 1
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _middleware(self, app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] not in ("http", "websocket"):
                await app(scope, receive, send)
                return
            method = scope.get("method", "WS")
            what = f"{method} {scope['path']}"
            self.requests.append(what)
            headers = dict(scope.get("headers") or [])
            authorized = headers.get(b"authorization", b"").decode() == f"Bearer {self.api_key}"
            fault = self._match_fault(what)
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)
            if scope["type"] == "http":
                if not authorized:
                    await _error(401, "Invalid API key")(scope, receive, send)
                    return
                if fault is not None and fault.status:
                    await _error(fault.status, "injected fault")(scope, receive, send)
                    return
            else:
                scope.setdefault("state", {})["fault"] = fault
                scope["state"]["authorized"] = authorized
            await app(scope, receive, send)

        return wrapped

    def _find(self, sid: str) -> Sandbox | None:
        with self._lock:
            found = self._sandboxes.get(sid)
            if found is None:
                found = next((s for s in self._sandboxes.values() if s.dto["name"] == sid), None)
            return found

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        sid = str(uuid.uuid4())
        name = body.get("name") or sid
        labels = body.get("labels") or {}
        if body.get("snapshot"):
            image = body["snapshot"]
        elif body.get("buildInfo"):
            # The SDK sends an image as the Dockerfile "FROM <image>" (daytona/common/image.py).
            found = re.search(r"^FROM\s+(\S+)", body["buildInfo"].get("dockerfileContent", ""), re.M)
            image = found.group(1) if found else ""
        else:
            image = "sandbox-base:bookworm-2"
        cpu, memory, disk = int(body.get("cpu") or 1), int(body.get("memory") or 1), int(body.get("disk") or 3)
        dto: dict[str, Any] = {
            "id": sid,
            "organizationId": ORGANIZATION,
            "name": name,
            "snapshot": body.get("snapshot"),
            "user": body.get("user") or "root",
            "env": body.get("env") or {},
            "labels": labels,
            "public": bool(body.get("public")),
            "networkBlockAll": bool(body.get("networkBlockAll")),
            "kvm": False,
            "target": body.get("target") or "us",
            "cpu": cpu,
            "gpu": 0,
            "memory": memory,
            "disk": disk,
            "state": "started",
            "desiredState": "started",
            "autoStopInterval": body.get("autoStopInterval", 15),
            "autoArchiveInterval": body.get("autoArchiveInterval", 10080),
            "autoDeleteInterval": body.get("autoDeleteInterval", -1),
            "createdAt": _now(),
            "updatedAt": _now(),
            "toolboxProxyUrl": f"http://127.0.0.1:{self.port}/toolbox",
        }
        if body.get("ttlMinutes"):
            dto["autoDestroyAt"] = datetime.fromtimestamp(time.time() + 60 * body["ttlMinutes"], UTC).isoformat()
        with self._lock:
            if any(s.dto["name"] == name for s in self._sandboxes.values()):
                return _error(409, f"Sandbox with name {name} already exists")
            # Reserve the name before the (slow) container creation so concurrent creates conflict.
            self._sandboxes[sid] = Sandbox(dto={**dto, "state": "creating"}, container="")
        try:
            container = await asyncio.to_thread(self._start_container, sid, image, dto, cpu, memory)
        except docker.errors.ImageNotFound:
            with self._lock:
                self._sandboxes.pop(sid, None)
            return _error(404, f"Snapshot {image} not found")
        except BaseException:
            with self._lock:
                self._sandboxes.pop(sid, None)
            raise
        with self._lock:
            deleted = sid not in self._sandboxes  # deleted while it was being created
            if not deleted:
                self._sandboxes[sid] = Sandbox(dto=dto, container=container)
        if deleted:
            await asyncio.to_thread(self._docker.remove_container, container, force=True)
            return _error(404, "Sandbox not found")
        return JSONResponse(dto)

    def _start_container(self, sid: str, image: str, dto: dict[str, Any], cpu: int, memory: int) -> str:
        host_config = self._docker.create_host_config(
            init=True,
            network_mode="none" if dto["networkBlockAll"] else "host",
            nano_cpus=cpu * 1_000_000_000,
            mem_limit=memory << 30,
        )
        created = self._docker.create_container(
            image=image,
            name=f"daytona-emu-{sid[:18]}",
            labels={OWNER_LABEL: self.owner, ID_LABEL: sid},
            host_config=host_config,
            entrypoint=["sleep", "infinity"],
            command=[],
            environment=dto["env"],
            detach=True,
        )
        try:
            self._docker.start(created["Id"])
        except BaseException:
            self._docker.remove_container(created["Id"], force=True)
            raise
        return str(created["Id"])

    async def _list(self, request: Request) -> Response:
        wanted = json.loads(request.query_params.get("labels") or "{}")
        limit = int(request.query_params.get("limit") or 100)
        cursor = request.query_params.get("cursor") or ""
        with self._lock:
            matching = sorted(
                (s.dto for s in self._sandboxes.values() if s.dto["state"] == "started"),
                key=lambda d: d["id"],
            )
        matching = [d for d in matching if all(d["labels"].get(k) == v for k, v in wanted.items())]
        page = [d for d in matching if d["id"] > cursor][:limit]
        next_cursor = page[-1]["id"] if len(page) == limit and page[-1]["id"] != matching[-1]["id"] else None
        return JSONResponse({"items": page, "nextCursor": next_cursor})

    async def _get(self, request: Request) -> Response:
        sandbox = self._find(request.path_params["sid"])
        if sandbox is None or not sandbox.container:
            return _error(404, f"Sandbox with ID or name {request.path_params['sid']} not found")
        return JSONResponse(sandbox.dto)

    async def _proxy_url(self, request: Request) -> Response:
        return JSONResponse({"url": f"http://127.0.0.1:{self.port}/toolbox"})

    async def _preview_url(self, request: Request) -> Response:
        # daytona_api_client_async/models/port_preview_url.py
        sandbox = self._find(request.path_params["sid"])
        if sandbox is None:
            return _error(404, f"Sandbox with ID or name {request.path_params['sid']} not found")
        url = f"https://{preview_host(request.path_params['port'], sandbox.dto['id'], DOMAIN)}"
        return JSONResponse({"sandboxId": sandbox.dto["id"], "url": url, "token": sandbox.preview_token})

    async def _delete(self, request: Request) -> Response:
        sandbox = self._find(request.path_params["sid"])
        if sandbox is None:
            return _error(404, f"Sandbox with ID or name {request.path_params['sid']} not found")
        with self._lock:
            self._sandboxes.pop(sandbox.dto["id"], None)
        if sandbox.container:
            with contextlib.suppress(docker.errors.NotFound):
                await asyncio.to_thread(self._docker.remove_container, sandbox.container, force=True)
        return JSONResponse({**sandbox.dto, "state": "destroyed", "desiredState": "destroyed"})

    # ----- toolbox: sessions -----

    def _toolbox(self, request: Request) -> Sandbox | Response:
        sandbox = self._find(request.path_params["sid"])
        if sandbox is None or not sandbox.container:
            return _error(404, "sandbox not found")
        return sandbox

    async def _create_session(self, request: Request) -> Response:
        sandbox = self._toolbox(request)
        if isinstance(sandbox, Response):
            return sandbox
        session_id = (await request.json())["sessionId"]
        with self._lock:
            if session_id in sandbox.sessions:
                return _error(409, f"session {session_id} already exists")
            sandbox.sessions[session_id] = {}
        return Response(status_code=201)

    async def _delete_session(self, request: Request) -> Response:
        sandbox = self._toolbox(request)
        if isinstance(sandbox, Response):
            return sandbox
        with self._lock:
            commands = sandbox.sessions.pop(request.path_params["session"], None)
        if commands is None:
            return _error(404, "session not found")
        # Like the daemon, deleting a session ends its processes (detached ones in their own session survive).
        for command in commands.values():
            if not command.done and command.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(command.pid, signal.SIGKILL)
        return Response(status_code=204)

    async def _exec(self, request: Request) -> Response:
        sandbox = self._toolbox(request)
        if isinstance(sandbox, Response):
            return sandbox
        body = await request.json()
        with self._lock:
            session = sandbox.sessions.get(request.path_params["session"])
        if session is None:
            return _error(404, "session not found")
        command = Command(id=str(uuid.uuid4()), command=body["command"])
        try:
            exec_id = await asyncio.to_thread(
                self._docker.exec_create,
                sandbox.container,
                # An exec'd process leads its own process group, so deleting the session can end it all.
                ["bash", "-c", body["command"]],
                stdout=True,
                stderr=True,
            )
        except docker.errors.NotFound:
            return _error(404, "sandbox not found")
        session[command.id] = command
        started = threading.Event()
        threading.Thread(target=self._pump, args=(exec_id["Id"], command, started), daemon=True).start()
        await asyncio.to_thread(started.wait, 10)
        if body.get("runAsync") or body.get("async"):
            return JSONResponse({"cmdId": command.id})
        loop, wake = asyncio.get_running_loop(), asyncio.Event()
        with command.lock:
            command.watchers.append((loop, wake))
        while not command.done:
            await wake.wait()
            wake.clear()
        out = b"".join(d for fd, d in command.frames if fd == 1).decode(errors="replace")
        err = b"".join(d for fd, d in command.frames if fd == 2).decode(errors="replace")
        return JSONResponse(
            {"cmdId": command.id, "exitCode": command.exit_code, "output": out + err, "stdout": out, "stderr": err}
        )

    def _pump(self, exec_id: str, command: Command, started: threading.Event) -> None:
        code: int | None = None
        try:
            sock = self._docker.exec_start(exec_id, socket=True)
            for _ in range(100):
                command.pid = int(self._docker.exec_inspect(exec_id).get("Pid") or 0)
                if command.pid:
                    break
                time.sleep(0.01)
            started.set()
            for fd, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
                command.publish((fd, data))
            sock.close()
            code = self._docker.exec_inspect(exec_id).get("ExitCode")
        except Exception:
            code = -1
        finally:
            started.set()
            command.publish(None, code if code is not None else -1)

    async def _command(self, request: Request) -> Response:
        sandbox = self._toolbox(request)
        if isinstance(sandbox, Response):
            return sandbox
        command = sandbox.sessions.get(request.path_params["session"], {}).get(request.path_params["cmd"])
        if command is None:
            return _error(404, "command not found")
        body: dict[str, Any] = {"id": command.id, "command": command.command}
        if command.done:
            body["exitCode"] = command.exit_code
        return JSONResponse(body)

    async def _upload(self, request: Request) -> Response:
        sandbox = self._toolbox(request)
        if isinstance(sandbox, Response):
            return sandbox
        form = await request.form()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for index in range(len(form) // 2):
                path, upload = form[f"files[{index}].path"], form[f"files[{index}].file"]
                assert isinstance(path, str) and not isinstance(upload, str)
                data = await upload.read()
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        try:
            await asyncio.to_thread(self._docker.put_archive, sandbox.container, "/", archive.getvalue())
        except docker.errors.NotFound:
            return _error(404, "sandbox not found")
        return Response(status_code=200)

    async def _git(self, request: Request, argv: list[str], body: dict[str, Any]) -> Response | bytes:
        """Runs one git operation of GIT_SCRIPT; its stdout, or the daemon's error response."""
        sandbox = self._toolbox(request)
        if isinstance(sandbox, Response):
            return sandbox
        env = {"GIT_USER": body.get("username") or "", "GIT_PASS": body.get("password") or ""}
        try:
            code, out, err = await asyncio.to_thread(
                self._run, sandbox.container, ["bash", "-c", GIT_SCRIPT, "git", *argv], env
            )
        except docker.errors.NotFound:
            return _error(404, "sandbox not found")
        if code == 0:
            return out
        message = err.decode(errors="replace").strip()
        status, kind = _git_error(message)
        return JSONResponse(
            {"statusCode": status, "message": message, "code": kind, "source": "DAYTONA_DAEMON"}, status_code=status
        )

    @staticmethod
    def _ok(result: Response | bytes) -> Response:
        return result if isinstance(result, Response) else Response(status_code=200)

    async def _git_clone(self, request: Request) -> Response:
        body = await request.json()
        argv = ["clone", body["url"], body["path"], body.get("branch") or "", str(body.get("depth") or 0)]
        return self._ok(await self._git(request, argv, body))

    async def _git_branches(self, request: Request) -> Response:
        result = await self._git(request, ["branches", request.query_params["path"]], {})
        if isinstance(result, Response):
            return result
        return JSONResponse({"branches": result.decode().split()})

    async def _git_create_branch(self, request: Request) -> Response:
        body = await request.json()
        return self._ok(await self._git(request, ["create-branch", body["path"], body["name"]], body))

    async def _git_checkout(self, request: Request) -> Response:
        body = await request.json()
        return self._ok(await self._git(request, ["checkout", body["path"], body["branch"]], body))

    async def _git_status(self, request: Request) -> Response:
        result = await self._git(request, ["status", request.query_params["path"]], {})
        if isinstance(result, Response):
            return result
        branch, *entries = result.decode().splitlines()
        files = [
            {
                "name": line[3:],
                "staging": _STATUS.get(line[0], "Modified"),
                "worktree": _STATUS.get(line[1], "Modified"),
                "extra": "",
            }
            for line in entries
        ]
        return JSONResponse({"currentBranch": branch, "fileStatus": files})

    async def _git_add(self, request: Request) -> Response:
        body = await request.json()
        return self._ok(await self._git(request, ["add", body["path"], *body["files"]], body))

    async def _git_commit(self, request: Request) -> Response:
        body = await request.json()
        empty = "1" if body.get("allow_empty") else ""
        argv = ["commit", body["path"], body["message"], body["author"], body["email"], empty]
        result = await self._git(request, argv, body)
        if isinstance(result, Response):
            return result
        return JSONResponse({"hash": result.decode().strip()})

    async def _git_push(self, request: Request) -> Response:
        body = await request.json()
        argv = ["push", body["path"], body.get("remote") or "origin", body.get("branch") or ""]
        return self._ok(await self._git(request, argv, body))

    def _run(self, container: str, argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
        exec_id = self._docker.exec_create(container, argv, stdout=True, stderr=True, environment=env)["Id"]
        out, err = self._docker.exec_start(exec_id, demux=True)
        code = self._docker.exec_inspect(exec_id)["ExitCode"]
        return int(code), out or b"", err or b""

    async def _logs(self, websocket: WebSocket) -> None:
        state = websocket.scope.get("state", {})
        sandbox = self._find(websocket.path_params["sid"])
        command = None
        if sandbox is not None:
            command = sandbox.sessions.get(websocket.path_params["session"], {}).get(websocket.path_params["cmd"])
        if not state.get("authorized") or command is None:
            await websocket.close(code=1008 if not state.get("authorized") else 4404)
            return
        fault: Fault | None = state.get("fault")
        budget = fault.close_ws_after if fault is not None and fault.close_ws_after >= 0 else -1
        await websocket.accept()
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        with command.lock:
            command.watchers.append((loop, wake))
        sent, index = 0, 0
        try:
            while True:
                wake.clear()
                with command.lock:
                    frames, done = command.frames[index:], command.done
                index += len(frames)
                for fd, data in frames:
                    if budget >= 0 and sent + len(data) > budget:
                        await websocket.close(code=1011, reason="injected: stream dropped")
                        return
                    await websocket.send_bytes((STDOUT_PREFIX if fd == 1 else STDERR_PREFIX) + data)
                    sent += len(data)
                if done and not frames:
                    await websocket.close(code=1000)
                    return
                if not frames:
                    await wake.wait()
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            with command.lock:
                command.watchers.remove((loop, wake))
