"""The loopback git smart-HTTP server, driven by the real git CLI on the host."""

from __future__ import annotations

import base64
import gzip
import http.client
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.git_server import FileStat, GitServer, GitServerError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def no_leaked_containers() -> Iterator[None]:
    """These tests start no sandbox: they need no Docker engine (overrides conftest's autouse check)."""
    yield


@pytest.fixture
def server() -> Iterator[GitServer]:
    with GitServer() as s:
        yield s


class Git:
    """The git CLI with a private HOME and no system or global config, so nothing on the host leaks in."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Test Agent",
            "GIT_AUTHOR_EMAIL": "agent@example.invalid",
            "GIT_COMMITTER_NAME": "Test Agent",
            "GIT_COMMITTER_EMAIL": "agent@example.invalid",
            "LC_ALL": "C",
        }

    def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["git", *args], cwd=cwd or self.home, env=self.env, capture_output=True, text=True, timeout=90
        )
        if check and result.returncode != 0:
            pytest.fail(f"git {' '.join(args)} failed ({result.returncode}):\n{result.stderr}", pytrace=False)
        return result

    @staticmethod
    def helper(token: str) -> list[str]:
        """The token given only on the command line, through a credential helper, never in the URL."""
        return ["-c", f"credential.helper=!f() {{ echo username=x; echo password={token}; }}; f"]


@pytest.fixture
def git(tmp_path: Path) -> Git:
    return Git(tmp_path / "home")


def test_clone_commit_push_branch_and_read_back(server: GitServer, git: Git, tmp_path: Path) -> None:
    assert server.token is not None
    url = server.create_repo("acme/widgets", {"README.md": "# Widgets\n", "src/app.py": "print('v1')\n"})
    assert url == f"http://127.0.0.1:{server.port}/acme/widgets.git"
    assert "@" not in url

    work = tmp_path / "work"
    git.run(*git.helper(server.token), "clone", url, str(work))
    assert (work / "src/app.py").read_text() == "print('v1')\n"

    git.run("checkout", "-b", "agent/fix-1", cwd=work)
    (work / "src/app.py").write_text("print('v2')\nprint('more')\n")
    (work / "docs").mkdir()
    (work / "docs/notes.md").write_text("notes\n")
    git.run("add", "-A", cwd=work)
    git.run("commit", "-m", "Fix the app", "-m", "Longer body.", cwd=work)
    git.run(*git.helper(server.token), "push", "origin", "agent/fix-1", cwd=work)

    assert server.branches("acme/widgets") == ["agent/fix-1", "main"]
    assert server.read_file("acme/widgets", "agent/fix-1", "src/app.py") == b"print('v2')\nprint('more')\n"
    assert server.read_file("acme/widgets", "main", "src/app.py") == b"print('v1')\n"
    assert server.list_files("acme/widgets", "agent/fix-1") == ["README.md", "docs/notes.md", "src/app.py"]
    head, initial = server.log("acme/widgets", "agent/fix-1")
    assert (head.subject, head.author_name, head.author_email) == ("Fix the app", "Test Agent", "agent@example.invalid")
    assert head.message == "Fix the app\n\nLonger body."
    assert head.parents == (initial.sha,)
    assert initial.subject == "Initial commit"
    assert server.rev_parse("acme/widgets", "agent/fix-1") == head.sha
    assert server.diff_stat("acme/widgets", "main", "agent/fix-1") == {
        "docs/notes.md": FileStat(1, 0),
        "src/app.py": FileStat(2, 1),
    }
    with pytest.raises(GitServerError):
        server.read_file("acme/widgets", "main", "docs/notes.md")

    requests = server.requests
    # git asked without credentials first, got the challenge, then asked its credential helper.
    first = requests[0]
    assert (first.status, first.authorized, first.header("Authorization")) == (401, False, None)
    assert all(r.authorized for r in requests if r.status != 401)
    pushes = [r for r in requests if r.method == "POST" and r.path.endswith("/git-receive-pack")]
    assert pushes and all(r.status == 200 and r.username == "x" for r in pushes)
    # Protocol v2 reached http-backend through the Git-Protocol header.
    assert any(r.header("Git-Protocol") == "version=2" for r in requests)
    # The token travelled only inside the Basic password.
    assert server.requests_exposing(server.token) == []
    assert all(server.token not in r.raw_target for r in requests)
    # Nothing went wrong inside http-backend.
    assert [r.backend_stderr for r in requests if r.backend_stderr] == []


@pytest.mark.parametrize("credentials", ["wrong", "missing"])
def test_clone_without_the_right_token_fails_with_an_auth_error(
    server: GitServer, git: Git, tmp_path: Path, credentials: str
) -> None:
    url = server.create_repo("private", {"secret.txt": "s3cret\n"})
    helper = git.helper("not-the-token") if credentials == "wrong" else []
    result = git.run(*helper, "clone", url, str(tmp_path / "work"), check=False)

    assert result.returncode != 0
    expected = "Authentication failed" if credentials == "wrong" else "could not read Username"
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "work" / "secret.txt").exists()
    assert {r.status for r in server.requests} == {401}
    challenge = server.requests[0]
    assert challenge.path == "/private.git/info/refs"


def test_rejected_push_surfaces_the_hook_message(server: GitServer, git: Git, tmp_path: Path) -> None:
    assert server.token is not None
    url = server.create_repo("guarded", {"a.txt": "a\n"})
    server.reject_pushes("guarded", "Branch protection: pushes to agent/* need a signed commit", branch="agent/x")
    work = tmp_path / "work"
    git.run(*git.helper(server.token), "clone", url, str(work))
    git.run("checkout", "-b", "agent/x", cwd=work)
    (work / "a.txt").write_text("b\n")
    git.run("commit", "-am", "change", cwd=work)

    result = git.run(*git.helper(server.token), "push", "origin", "agent/x", cwd=work, check=False)
    assert result.returncode != 0
    assert "remote: Branch protection: pushes to agent/* need a signed commit" in result.stderr, result.stderr
    assert "pre-receive hook declined" in result.stderr
    assert server.branches("guarded") == ["main"]

    # Only that branch is guarded; after allow_pushes it goes through.
    git.run(*git.helper(server.token), "push", "origin", "HEAD:other", cwd=work)
    server.allow_pushes("guarded")
    git.run(*git.helper(server.token), "push", "origin", "agent/x", cwd=work)
    assert server.branches("guarded") == ["agent/x", "main", "other"]


def test_read_only_repository_refuses_pushes_but_serves_clones(server: GitServer, git: Git, tmp_path: Path) -> None:
    assert server.token is not None
    url = server.create_repo("mirror", {"a.txt": "a\n"}, read_only=True)
    work = tmp_path / "work"
    git.run(*git.helper(server.token), "clone", url, str(work))
    git.run("checkout", "-b", "feature", cwd=work)
    git.run("commit", "--allow-empty", "-m", "empty", cwd=work)

    result = git.run(*git.helper(server.token), "push", "origin", "feature", cwd=work, check=False)
    assert result.returncode != 0
    assert "403" in result.stderr, result.stderr
    assert server.branches("mirror") == ["main"]

    server.set_read_only("mirror", False)
    git.run(*git.helper(server.token), "push", "origin", "feature", cwd=work)
    assert server.branches("mirror") == ["feature", "main"]


def test_empty_repository_clones_with_a_warning_and_takes_a_first_push(
    server: GitServer, git: Git, tmp_path: Path
) -> None:
    assert server.token is not None
    url = server.create_repo("fresh", None, branch="trunk")
    assert server.branches("fresh") == []
    work = tmp_path / "work"
    result = git.run(*git.helper(server.token), "clone", url, str(work))
    assert "You appear to have cloned an empty repository." in result.stderr

    (work / "hello.txt").write_text("hello\n")
    git.run("add", "hello.txt", cwd=work)
    git.run("commit", "-m", "First", cwd=work)
    git.run(*git.helper(server.token), "push", "origin", "HEAD:trunk", cwd=work)

    assert server.branches("fresh") == ["trunk"]
    assert server.read_file("fresh", "trunk", "hello.txt") == b"hello\n"
    assert [c.subject for c in server.log("fresh", "trunk")] == ["First"]


def test_five_megabyte_binary_round_trips(server: GitServer, git: Git, tmp_path: Path) -> None:
    assert server.token is not None
    blob = os.urandom(5 * 1024 * 1024)
    url = server.create_repo("big", {"README.md": "big\n"})
    work = tmp_path / "work"
    git.run(*git.helper(server.token), "clone", url, str(work))
    git.run("checkout", "-b", "assets", cwd=work)
    (work / "assets").mkdir()
    (work / "assets/blob.bin").write_bytes(blob)
    git.run("add", "assets/blob.bin", cwd=work)
    git.run("commit", "-m", "Add a blob", cwd=work)
    git.run(*git.helper(server.token), "push", "origin", "assets", cwd=work)

    assert server.read_file("big", "assets", "assets/blob.bin") == blob
    assert server.diff_stat("big", "main", "assets") == {"assets/blob.bin": FileStat(None, None)}
    # Above http.postBuffer (1 MiB), git streams the pack with Transfer-Encoding: chunked.
    push = [r for r in server.requests if r.method == "POST" and r.path.endswith("/git-receive-pack")][-1]
    assert push.header("Transfer-Encoding") == "chunked"
    assert push.status == 200

    again = tmp_path / "again"
    git.run(*git.helper(server.token), "clone", "--branch", "assets", url, str(again))
    assert (again / "assets/blob.bin").read_bytes() == blob


def test_protocol_v0_and_v2_both_work(server: GitServer, git: Git) -> None:
    assert server.token is not None
    url = server.create_repo("proto", {"a": "a"})
    sha = server.rev_parse("proto", "main")
    for version in ("0", "2"):
        server.clear_requests()
        out = git.run(*git.helper(server.token), "-c", f"protocol.version={version}", "ls-remote", url).stdout
        assert f"{sha}\trefs/heads/main" in out
        sent = {r.header("Git-Protocol") for r in server.requests}
        assert sent == ({None} if version == "0" else {"version=2"})


def _pkt(line: str) -> bytes:
    data = line.encode()
    return b"%04x%s" % (len(data) + 4, data)


LS_REFS = _pkt("command=ls-refs\n") + b"0001" + _pkt("peel\n") + b"0000"


def _post_upload_pack(server: GitServer, body: bytes | Iterator[bytes], **headers: str) -> tuple[int, bytes]:
    assert server.token is not None
    auth = base64.b64encode(f"x:{server.token}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/raw.git/git-upload-pack",
            body=body,
            headers={
                "Authorization": f"Basic {auth}",
                "Content-Type": "application/x-git-upload-pack-request",
                "Accept": "application/x-git-upload-pack-result",
                "Git-Protocol": "version=2",
                **headers,
            },
            encode_chunked=not isinstance(body, bytes),
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("encoding", ["identity", "gzip", "chunked", "gzip+chunked"])
def test_request_bodies_gzip_and_chunked(server: GitServer, encoding: str) -> None:
    server.create_repo("raw", {"a": "a"})
    sha = server.rev_parse("raw", "main")
    payload = gzip.compress(LS_REFS) if "gzip" in encoding else LS_REFS
    headers = {"Content-Encoding": "gzip"} if "gzip" in encoding else {}
    body: bytes | Iterator[bytes] = iter([payload[:7], payload[7:]]) if "chunked" in encoding else payload

    status, out = _post_upload_pack(server, body, **headers)

    assert status == 200, out
    assert f"{sha} refs/heads/main".encode() in out
    (request,) = server.requests
    assert request.backend_stderr == ""
    assert request.header("Transfer-Encoding") == ("chunked" if "chunked" in encoding else None)


def test_keep_alive_connection_serves_several_requests(server: GitServer) -> None:
    assert server.token is not None
    server.create_repo("raw", {"a": "a"})
    auth = base64.b64encode(f"x:{server.token}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(3):
            conn.request(
                "GET", "/raw.git/info/refs?service=git-upload-pack", headers={"Authorization": f"Basic {auth}"}
            )
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Type") == "application/x-git-upload-pack-advertisement"
            assert b"refs/heads/main" in response.read()
        conn.request("GET", "/raw.git/info/refs?service=git-upload-pack")
        response = conn.getresponse()
        assert response.status == 401
        assert response.getheader("WWW-Authenticate") == 'Basic realm="tests git server"'
        response.read()
    finally:
        conn.close()
    assert [r.status for r in server.requests] == [200, 200, 200, 401]


def test_unknown_repository_is_404(server: GitServer) -> None:
    assert server.token is not None
    auth = base64.b64encode(f"x:{server.token}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/nope.git/info/refs?service=git-upload-pack", headers={"Authorization": f"Basic {auth}"})
        assert conn.getresponse().status == 404
    finally:
        conn.close()


def test_stop_ends_the_thread_frees_the_port_and_removes_the_root() -> None:
    server = GitServer(token="t0ken")
    with server:
        server.create_repo("r", {"a": "a"})
        port, root = server.port, server.root
        assert server.running and root.is_dir()
        # An idle keep-alive connection must not hold stop() up.
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /r.git/info/refs HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(64).startswith(b"HTTP/1.1 401")
    assert not server.running
    assert not root.exists()
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    server.stop()  # idempotent


def test_no_auth_mode(git: Git, tmp_path: Path) -> None:
    with GitServer(require_auth=False) as server:
        assert server.token is None
        url = server.create_repo("open", {"a": "a\n"})
        git.run("clone", url, str(tmp_path / "work"))
        assert {r.status for r in server.requests} == {200}


def test_concurrent_clones(server: GitServer, git: Git, tmp_path: Path) -> None:
    assert server.token is not None
    url = server.create_repo("busy", {f"f{i}.txt": f"{i}\n" for i in range(50)})
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(
                lambda i: git.run(*git.helper(server.token or ""), "clone", url, str(tmp_path / f"w{i}"), check=False),
                range(8),
            )
        )
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    assert all((tmp_path / f"w{i}" / "f49.txt").read_text() == "49\n" for i in range(8))


def test_fetch_negotiation_with_gzipped_requests(server: GitServer, git: Git, tmp_path: Path) -> None:
    """With many local commits to advertise, git gzips its upload-pack requests (protocol v0)."""
    assert server.token is not None
    url = server.create_repo("nego", {"a": "a\n"})
    work = tmp_path / "work"
    git.run(*git.helper(server.token), "clone", url, str(work))
    # 200 local commits on top of main, made in one fast-import run, newer than the common one so git offers them first.
    now = int(time.time()) + 60
    stream = "".join(
        f"commit refs/heads/main\ncommitter A <a@example.invalid> {now + i} +0000\n"
        f"data {len(f'local {i}')}\nlocal {i}\n" + ("from refs/heads/main^0\n" if i == 0 else "") + "\n"
        for i in range(200)
    )
    subprocess.run(["git", "fast-import", "--quiet"], cwd=work, env=git.env, input=stream, text=True, check=True)
    new = server.commit_files("nego", "main", {"b": "b\n"}, message="Upstream change")
    server.clear_requests()

    git.run(*git.helper(server.token), "-c", "protocol.version=0", "fetch", "origin", cwd=work)

    assert git.run("rev-parse", "origin/main", cwd=work).stdout.strip() == new
    gzipped = [r for r in server.requests if r.header("Content-Encoding") == "gzip"]
    assert gzipped and all(r.status == 200 and not r.backend_stderr for r in gzipped)


@pytest.mark.parametrize("authorized", [True, False])
def test_expect_100_continue_is_answered_before_the_body(server: GitServer, authorized: bool) -> None:
    """Without credentials the 401 comes before the client sends its body; with them, 100 Continue."""
    assert server.token is not None
    server.create_repo("raw", {"a": "a"})
    auth = "Authorization: Basic " + base64.b64encode(f"x:{server.token}".encode()).decode() + "\r\n"
    head = (
        "POST /raw.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\nGit-Protocol: version=2\r\n"
        f"Content-Length: {len(LS_REFS)}\r\n{auth if authorized else ''}\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        first = sock.recv(4096)
        if not authorized:
            assert first.startswith(b"HTTP/1.1 401"), first
            assert b"WWW-Authenticate: Basic" in first
            return
        assert first.startswith(b"HTTP/1.1 100"), first
        sock.sendall(LS_REFS)
        response = first
        while b"0\r\n\r\n" not in response:
            data = sock.recv(65536)
            assert data, response
            response += data
    assert b"HTTP/1.1 200" in response
    assert b"refs/heads/main" in response
