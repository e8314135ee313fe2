"""A real git smart-HTTP server on loopback, for tests.

`GitServer` serves bare repositories from a temporary directory through git's own `git http-backend` CGI, behind a
small threaded HTTP/1.1 server bound to 127.0.0.1 on a port the kernel chooses. Clone, fetch (protocol v0 and v2) and
push work with any git client. Requests must carry HTTP Basic credentials whose password is the server's token (any
username, like GitHub's `x-access-token`); without them the server answers 401 with `WWW-Authenticate`, so git's
credential machinery is exercised. Every request is recorded (method, path, query, headers, status) so a test can
check where a secret did or did not travel.

Helpers create repositories with an initial commit, read branches, files, logs and diff stats back, make a repository
read-only, and make pushes fail with a message through a `pre-receive` hook.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple

log = logging.getLogger(__name__)

GIT = shutil.which("git") or "/usr/bin/git"
_COPY_CHUNK = 64 * 1024
# /<name>.git/<rest>, where name may contain slashes ("org/repo").
_REPO_PATH = re.compile(r"^/(?P<name>[^?#]+?)\.git(?P<rest>/.*)?$")
_REPO_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
# Hermetic git for the server side: no system or user config, a fixed identity for commits the helpers make.
_SERVER_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Git Server",
    "GIT_AUTHOR_EMAIL": "git-server@example.invalid",
    "GIT_COMMITTER_NAME": "Git Server",
    "GIT_COMMITTER_EMAIL": "git-server@example.invalid",
}


class GitServerError(RuntimeError):
    """A git command the server ran for a helper failed, or the server could not start."""


@dataclass
class RecordedRequest:
    """One HTTP request as the server saw it."""

    method: str
    path: str  # the URL path, percent-decoded
    query: str  # the raw query string
    headers: dict[str, str]  # header name (as sent) -> value; repeated headers joined with ", "
    raw_target: str  # the request target exactly as sent
    repo: str | None = None  # repository name (without .git) when the path names one
    username: str | None = None  # the Basic auth username, when credentials were sent
    authorized: bool = False
    status: int | None = None  # the status the server answered with
    backend_stderr: str = ""  # what git http-backend wrote to stderr, if anything

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


class Commit(NamedTuple):
    sha: str
    parents: tuple[str, ...]
    author_name: str
    author_email: str
    committer_name: str
    committer_email: str
    subject: str
    message: str  # the full message (subject and body)


class FileStat(NamedTuple):
    """Lines added and deleted in one file; both None for a binary file."""

    added: int | None
    deleted: int | None


@dataclass
class _RepoSettings:
    read_only: bool = False


@dataclass
class _Live:
    """Connections and backend processes in flight, so stop() can end them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sockets: set[socket.socket] = field(default_factory=set)
    processes: set[subprocess.Popen[bytes]] = field(default_factory=set)


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(); stop() first shuts their sockets so none lingers on keep-alive.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    git_server: GitServer

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.git_server._live.lock:
            self.git_server._live.sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.git_server._live.lock:
            self.git_server._live.sockets.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tests-git-server/1"
    timeout = 120  # a stuck client cannot hold a handler thread (and so stop()) forever
    server: _Server

    # -- plumbing --------------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def _git(self) -> GitServer:
        return self.server.git_server

    def _start_record(self) -> RecordedRequest:
        split = urllib.parse.urlsplit(self.path)
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        record = RecordedRequest(
            method=self.command,
            path=urllib.parse.unquote(split.path),
            query=split.query,
            headers=headers,
            raw_target=self.path,
        )
        match = _REPO_PATH.match(record.path)
        if match:
            record.repo = match.group("name")
        record.username, record.authorized = self._git._check_auth(self.headers.get("Authorization"))
        self._git._record(record)
        return record

    def _chunked(self) -> bool:
        return "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def _iter_body(self) -> Iterator[bytes]:
        """The request body, de-chunked, in pieces as they arrive."""
        if self._chunked():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ConnectionError("client closed the connection inside a chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, _COPY_CHUNK))
                    if not data:
                        raise ConnectionError("client closed the connection inside a chunk")
                    remaining -= len(data)
                    yield data
                self.rfile.readline(8)  # the CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, _COPY_CHUNK))
                if not data:
                    raise ConnectionError("client closed the connection inside the body")
                remaining -= len(data)
                yield data

    def _discard_body(self) -> None:
        if self._chunked():
            self.close_connection = True  # not worth draining an unbounded body; the client reconnects
            return
        for _ in self._iter_body():
            pass

    def _send_simple(
        self, record: RecordedRequest, status: int, text: str, headers: Mapping[str, str] | None = None
    ) -> None:
        body = text.encode()
        record.status = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _unauthorized(self, record: RecordedRequest) -> None:
        challenge = {"WWW-Authenticate": f'Basic realm="{self._git.realm}"'}
        self._send_simple(record, 401, "authentication required\n", challenge)

    # -- Expect: 100-continue: refuse before the client sends the body --------------------------------------------

    def handle_expect_100(self) -> bool:
        if self._git.token is not None:
            _, authorized = self._git._check_auth(self.headers.get("Authorization"))
            if not authorized:
                record = self._start_record()
                self.close_connection = True
                self._unauthorized(record)
                return False
        return super().handle_expect_100()

    # -- methods ---------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _not_allowed(self) -> None:
        record = self._start_record()
        self._discard_body()
        self._send_simple(record, 405, "method not allowed\n", {"Allow": "GET, POST"})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def _dispatch(self) -> None:
        record = self._start_record()
        if self._git.token is not None and not record.authorized:
            self._discard_body()
            self._unauthorized(record)
            return
        if record.repo is None:
            self._discard_body()
            self._send_simple(record, 404, "not a repository path\n")
            return
        if self._git._is_push(record) and self._git._settings(record.repo).read_only:
            self._discard_body()
            self._send_simple(record, 403, f"repository {record.repo} is read-only\n")
            return
        self._run_backend(record)

    def _cgi_env(self, record: RecordedRequest) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._git.root),
            **_SERVER_GIT_ENV,
            "GIT_PROJECT_ROOT": str(self._git.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": self.server_version,
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_NAME": self._git.host,
            "SERVER_PORT": str(self._git.port),
            "REQUEST_METHOD": self.command,
            "REQUEST_URI": self.path,
            "PATH_INFO": record.path,
            "QUERY_STRING": record.query,
            "REMOTE_ADDR": self.client_address[0],
        }
        if record.username is not None:
            env["REMOTE_USER"] = record.username or "anonymous"
            env["AUTH_TYPE"] = "Basic"
        if content_type := self.headers.get("Content-Type"):
            env["CONTENT_TYPE"] = content_type
        # With a chunked body the length is unknown: http-backend then reads stdin to EOF.
        if not self._chunked() and (length := self.headers.get("Content-Length")) is not None:
            env["CONTENT_LENGTH"] = length
        if encoding := self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = encoding
        if protocol := self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = protocol
            env["HTTP_GIT_PROTOCOL"] = protocol
        return env

    def _run_backend(self, record: RecordedRequest) -> None:
        proc = subprocess.Popen(
            [GIT, "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._cgi_env(record),
            cwd=self._git.root,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        live = self._git._live
        with live.lock:
            live.processes.add(proc)
        body_error: list[BaseException] = []
        stderr_chunks: list[bytes] = []
        feeder = threading.Thread(target=self._feed_body, args=(proc.stdin, body_error), daemon=True)
        drainer = threading.Thread(target=_drain, args=(proc.stderr, stderr_chunks), daemon=True)
        feeder.start()
        drainer.start()
        try:
            self._relay_response(record, proc.stdout)
        except (BrokenPipeError, ConnectionResetError) as err:
            log.debug("client went away: %s", err)
            self.close_connection = True
            proc.kill()
        finally:
            proc.stdout.close()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            feeder.join(timeout=60)
            drainer.join(timeout=60)
            with live.lock:
                live.processes.discard(proc)
            record.backend_stderr = b"".join(stderr_chunks).decode(errors="replace")
            if record.backend_stderr:
                log.info("git http-backend stderr for %s %s: %s", self.command, self.path, record.backend_stderr)
            if body_error:
                self.close_connection = True

    def _feed_body(self, stdin: IO[bytes], errors: list[BaseException]) -> None:
        """Copies the request body into http-backend; if it stops reading early, drains the rest from the client."""
        sink: IO[bytes] | None = stdin
        try:
            for data in self._iter_body():
                if sink is None:
                    continue
                try:
                    sink.write(data)
                except (BrokenPipeError, ValueError):
                    sink = None
        except (OSError, ValueError) as err:
            errors.append(err)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _relay_response(self, record: RecordedRequest, stdout: IO[bytes]) -> None:
        status, reason, headers = _read_cgi_headers(stdout)
        record.status = status
        self.send_response(status, reason)
        length: int | None = None
        for key, value in headers:
            if key.lower() == "content-length":
                length = int(value)
            self.send_header(key, value)
        chunked = length is None and self.request_version != "HTTP/1.0"
        if length is None and not chunked:
            self.close_connection = True  # HTTP/1.0 client: the body ends when the connection does
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        while True:
            data = stdout.read1(_COPY_CHUNK) if hasattr(stdout, "read1") else stdout.read(_COPY_CHUNK)
            if not data:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


def _drain(stream: IO[bytes], into: list[bytes]) -> None:
    try:
        while data := stream.read(_COPY_CHUNK):
            into.append(data)
    except (OSError, ValueError):
        pass
    finally:
        stream.close()


def _read_cgi_headers(stdout: IO[bytes]) -> tuple[int, str | None, list[tuple[str, str]]]:
    status, reason = 200, None
    headers: list[tuple[str, str]] = []
    while True:
        line = stdout.readline(65536)
        if not line:
            if not headers:
                return 502, "Bad Gateway", [("Content-Length", "0")]
            break
        line = line.rstrip(b"\r\n")
        if not line:
            break
        key, _, value = line.decode("latin-1").partition(":")
        key, value = key.strip(), value.strip()
        if key.lower() == "status":
            code, _, text = value.partition(" ")
            status, reason = int(code), text or None
        else:
            headers.append((key, value))
    return status, reason, headers


class GitServer:
    """Bare repositories served over git smart HTTP on loopback, with HTTP Basic token auth."""

    def __init__(
        self,
        token: str | None = None,
        *,
        require_auth: bool = True,
        host: str = "127.0.0.1",
        root: Path | None = None,
        realm: str = "tests git server",
    ) -> None:
        """`token` defaults to a random one; with require_auth=False any request is served (token is then None)."""
        self.token: str | None = (token or secrets.token_urlsafe(24)) if require_auth else None
        self.host = host
        self.realm = realm
        self._owns_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="git-server-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._repo_settings: dict[str, _RepoSettings] = {}
        self._live = _Live()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> GitServer:
        if self._server is not None:
            return self
        if not Path(GIT).exists():
            raise GitServerError(f"git is not installed (looked for {GIT}); install the git package")
        exec_path = subprocess.run([GIT, "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
        if not (Path(exec_path) / "git-http-backend").exists():
            raise GitServerError(f"git-http-backend is missing from {exec_path}; install git's full package")
        server = _Server((self.host, 0), _Handler)
        server.git_server = self
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"git-server:{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops accepting, ends open connections and backends, joins every thread; removes the root it created."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # serve_forever returns; no new connections are accepted
        with self._live.lock:
            sockets = list(self._live.sockets)
            processes = list(self._live.processes)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for proc in processes:
            proc.kill()
        server.server_close()  # joins the handler threads
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        if self._port is None:
            raise GitServerError("the server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, name: str) -> str:
        """The clone URL of a repository, without credentials."""
        return f"{self.base_url}/{self._name(name)}.git"

    def credential_helper(self, token: str | None = None, username: str = "x-access-token") -> str:
        """A `credential.helper` value that answers with this server's token (or `token`), for `git -c`."""
        secret = self.token if token is None else token
        if secret is None:
            raise GitServerError("this server requires no token")
        return f"!f() {{ echo username={username}; echo password={secret}; }}; f"

    # -- request log -----------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def requests_exposing(self, secret: str) -> list[RecordedRequest]:
        """Requests where `secret` appears outside the Basic password: in the path, query, a header or the username."""
        found = []
        for record in self.requests:
            places = [record.raw_target, record.path, record.query, record.username or ""]
            places += [value for key, value in record.headers.items() if key.lower() != "authorization"]
            if any(secret in place for place in places):
                found.append(record)
        return found

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)

    def _check_auth(self, header: str | None) -> tuple[str | None, bool]:
        """(username, authorized) for an Authorization header value."""
        if not header or header[:6].lower() != "basic ":
            return None, self.token is None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, self.token is None
        username, _, password = decoded.partition(":")
        if self.token is None:
            return username, True
        return username, hmac.compare_digest(password.encode(), self.token.encode())

    @staticmethod
    def _is_push(record: RecordedRequest) -> bool:
        service = urllib.parse.parse_qs(record.query).get("service", [""])[0]
        return service == "git-receive-pack" or record.path.endswith("/git-receive-pack")

    # -- repositories ----------------------------------------------------------------------------------------------

    @staticmethod
    def _name(name: str) -> str:
        name = name.removesuffix(".git").strip("/")
        if not _REPO_NAME.match(name) or any(part in (".", "..") for part in name.split("/")):
            raise ValueError(f"bad repository name {name!r}")
        return name

    def _settings(self, name: str) -> _RepoSettings:
        with self._lock:
            return self._repo_settings.setdefault(name, _RepoSettings())

    def repo_path(self, name: str) -> Path:
        return self.root / f"{self._name(name)}.git"

    def git(
        self,
        name: str,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> bytes:
        """Runs a git command in a repository's bare directory and returns its stdout."""
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            **_SERVER_GIT_ENV,
            **(env or {}),
        }
        result = subprocess.run(
            [GIT, "--git-dir", str(self.repo_path(name)), *args], input=input, capture_output=True, env=full_env
        )
        if check and result.returncode != 0:
            raise GitServerError(f"git {' '.join(args)} in {name} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def create_repo(
        self,
        name: str,
        files: Mapping[str, str | bytes] | None = None,
        branch: str = "main",
        *,
        message: str = "Initial commit",
        read_only: bool = False,
    ) -> str:
        """A bare repository with one commit holding `files` on `branch` (empty when files is None); returns its URL."""
        name = self._name(name)
        path = self.repo_path(name)
        if path.exists():
            raise GitServerError(f"repository {name} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [GIT, "init", "--quiet", "--bare", f"--initial-branch={branch}", str(path)],
            check=True,
            capture_output=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), **_SERVER_GIT_ENV},
        )
        self.git(name, "config", "http.receivepack", "true")
        self.git(name, "config", "uploadpack.allowFilter", "true")
        self.git(name, "config", "receive.advertisePushOptions", "true")
        self._settings(name).read_only = read_only
        if files is not None:
            self.commit_files(name, branch, files, message=message)
        return self.url(name)

    def commit_files(
        self, name: str, branch: str, files: Mapping[str, str | bytes], *, message: str = "Update files"
    ) -> str:
        """Commits `files` (added or replaced; paths with '/' make directories) on top of `branch`; returns the sha."""
        parent = self.rev_parse(name, f"refs/heads/{branch}")
        with tempfile.TemporaryDirectory(prefix="git-server-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if parent:
                self.git(name, "read-tree", parent, env=env)
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                blob = self.git(name, "hash-object", "-w", "--stdin", input=data).decode().strip()
                self.git(name, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
            tree = self.git(name, "write-tree", env=env).decode().strip()
        args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
        sha = self.git(name, *args).decode().strip()
        self.git(name, "update-ref", f"refs/heads/{branch}", sha, *([parent] if parent else []))
        return sha

    def set_read_only(self, name: str, read_only: bool = True) -> None:
        """A read-only repository answers 403 to every push request; clones and fetches still work."""
        self._settings(self._name(name)).read_only = read_only

    def reject_pushes(self, name: str, message: str, branch: str | None = None) -> None:
        """Installs a pre-receive hook that prints `message` and refuses pushes (to `branch` only, when given)."""
        target = f"refs/heads/{branch}" if branch else ""
        if "'" in target:
            raise ValueError(f"bad branch name {branch!r}")
        hooks = self.repo_path(name) / "hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "reject-message").write_text(message if message.endswith("\n") else message + "\n")
        script = (
            "#!/bin/sh\n"
            f"target='{target}'\n"
            "while read -r old new ref; do\n"
            '  if [ -z "$target" ] || [ "$ref" = "$target" ]; then\n'
            '    cat "$(dirname "$0")/reject-message" >&2\n'
            "    exit 1\n"
            "  fi\n"
            "done\n"
            "exit 0\n"
        )
        hook = hooks / "pre-receive"
        hook.write_text(script)
        hook.chmod(0o755)

    def allow_pushes(self, name: str) -> None:
        """Removes the hook that reject_pushes installed."""
        (self.repo_path(name) / "hooks" / "pre-receive").unlink(missing_ok=True)

    # -- reading back ----------------------------------------------------------------------------------------------

    def rev_parse(self, name: str, ref: str) -> str | None:
        """The commit a ref or revision names, or None when it names nothing."""
        out = self.git(name, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        return out.decode().strip() or None

    def branches(self, name: str) -> list[str]:
        out = self.git(name, "for-each-ref", "--format=%(refname:lstrip=2)", "refs/heads/")
        return sorted(out.decode().split())

    def read_file(self, name: str, branch: str, path: str) -> bytes:
        """A file's bytes at the tip of a branch (or any revision); GitServerError when it is absent."""
        return self.git(name, "cat-file", "blob", f"{branch}:{path}")

    def list_files(self, name: str, branch: str) -> list[str]:
        out = self.git(name, "ls-tree", "-r", "-z", "--name-only", branch)
        return sorted(p.decode() for p in out.split(b"\0") if p)

    def log(self, name: str, branch: str, max_count: int | None = None) -> list[Commit]:
        """Commits reachable from a branch, newest first."""
        fmt = "%H%x1f%P%x1f%an%x1f%ae%x1f%cn%x1f%ce%x1f%s%x1f%B%x1e"
        args = ["log", f"--format={fmt}"] + ([f"--max-count={max_count}"] if max_count else []) + [branch, "--"]
        commits = []
        for entry in self.git(name, *args).decode(errors="replace").split("\x1e"):
            entry = entry.strip("\n")
            if not entry:
                continue
            sha, parents, an, ae, cn, ce, subject, message = entry.split("\x1f")
            commits.append(Commit(sha, tuple(parents.split()), an, ae, cn, ce, subject, message.strip("\n")))
        return commits

    def diff_stat(self, name: str, base: str, branch: str) -> dict[str, FileStat]:
        """Per-file added/deleted lines on `branch` since it forked from `base` (`git diff base...branch`)."""
        out = self.git(name, "diff", "--numstat", "-z", "--no-renames", f"{base}...{branch}", "--")
        stats: dict[str, FileStat] = {}
        for entry in out.decode(errors="replace").split("\0"):
            if not entry:
                continue
            added, deleted, path = entry.split("\t", 2)
            stats[path] = FileStat(None if added == "-" else int(added), None if deleted == "-" else int(deleted))
        return stats
