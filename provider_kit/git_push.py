"""Pushes a workspace's branch from outside its sandbox, so the git token never meets code the agent controls.

Inside the sandbox, push.sh commits as the agent user and writes HEAD out as a git bundle (base64 on stdout;
the commit recorded at setup, refs/sandbox/base, is its prerequisite). Here, in a fresh private temporary
directory of the provider process, git runs with no system, global or repository configuration but what is
given on its command line, no hooks, and only the protocols the operator allows:

1. the base commit is fetched from the workspace's recorded repository URL as a partial clone (depth 1, no
   blobs: the blobs that the bundle's thin pack and the diff need are fetched from there when needed),
2. the bundle is verified and only its HEAD is fetched (fsck on; any other ref in it is ignored),
3. the change's stats and diff are computed here from those objects, never taken from the sandbox,
4. the commit is pushed as <sha>:refs/heads/<recorded branch> to the recorded URL, the token coming from a
   credential helper that answers only for that URL's scheme and host (redirects are not followed).

The bundle is hostile input: its size is capped, it is parsed by git's own bundle reader, and every failure
is a FAILED_PRECONDITION with git's message (never INTERNAL).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from provider_kit.driver import Exit, Output
from provider_kit.errors import ApiError, failed_precondition, unavailable
from provider_kit.workspace import EMPTY_TREE

MAX_BUNDLE_BYTES = 512 << 20
MAX_DIFF_BYTES = 1 << 20
_MAX_STDERR_BYTES = 64 * 1024
_MAX_HEADER_BYTES = 512
GIT_TIMEOUT_SECONDS = 600.0
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Environment variables of the provider process that git may keep: how it reaches the network (the operator's
# proxy and CA bundle). Nothing else is inherited, GIT_* least of all.
_KEPT_ENV = (
    "PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTPS_PROXY",
    "NO_PROXY",
)
# Answers `get` only for the recorded repository's scheme and host; prints nothing otherwise (git then fails).
_HELPER = (
    '!f() { test "$1" = get || exit 0; p= h=; while IFS= read -r l; do case $l in protocol=*) p=${l#protocol=};; '
    "host=*) h=${l#host=};; esac; done; "
    'test "$p" = "$SANDBOX_PUSH_PROTOCOL" && test "$h" = "$SANDBOX_PUSH_HOST" || exit 0; '
    'echo username=x-access-token; echo "password=$SANDBOX_PUSH_TOKEN"; }; f'
)

# The private repository's own configuration (never the sandbox's): origin is the recorded URL, a promisor.
_PROMISOR_CONFIG = (
    ("core.repositoryFormatVersion", "1"),
    ("extensions.partialClone", "origin"),
    ("remote.origin.url", "{url}"),
    ("remote.origin.promisor", "true"),
    ("remote.origin.partialCloneFilter", "blob:none"),
)
_DIFF = ("--no-ext-diff", "--no-textconv", "--no-color")


@dataclass(frozen=True)
class Pushed:
    sha: str
    files_changed: int
    insertions: int
    deletions: int
    diff: str


@dataclass(frozen=True)
class Received:
    """What push.sh reported: base and head as it saw them (hints: the bundle is what counts), its exit code
    and its stderr."""

    base: str
    head: str
    code: int
    stderr: str


def _fail(message: str) -> ApiError:
    return failed_precondition("PUSH_FAILED", message)


class OutsidePush:
    """One push, in its own temporary directory (removed by close)."""

    def __init__(self, url: str, token: str, *, allow_http: bool) -> None:
        parts = urlsplit(url)
        allowed = {"https"} | ({"http"} if allow_http else set())
        if parts.scheme not in allowed:
            # file:// would name a path on the provider's own machine: never pushed to from here.
            raise failed_precondition(
                "PUSH_UNSUPPORTED", f"pushing to {parts.scheme}:// repositories is not supported; use https://"
            )
        self._url = url
        self._token = token
        self._protocols = sorted(allowed)
        self._tmp = Path(tempfile.mkdtemp(prefix="sandbox-push-"))
        self._repo = self._tmp / "repo.git"
        self._bundle = self._tmp / "head.bundle"
        self._env = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
        self._env.update(
            HOME=str(self._tmp),
            LC_ALL="C",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_TERMINAL_PROMPT="0",
            SANDBOX_PUSH_PROTOCOL=parts.scheme,
            SANDBOX_PUSH_HOST=parts.netloc,
            SANDBOX_PUSH_TOKEN=token,
        )

    async def close(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self._tmp, True)

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "[REDACTED]") if self._token else text

    async def receive(self, stream: AsyncIterator[Output | Exit]) -> Received:
        """Reads push.sh's output: its header line, then the base64 bundle into a file, size-capped."""
        header = bytearray()
        pending = b""
        size = 0
        err = bytearray()
        code: int | None = None
        fd = os.open(self._bundle, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            async for item in stream:
                if isinstance(item, Exit):
                    code = item.code
                    break
                if item.fd != 1:
                    err.extend(item.data[: _MAX_STDERR_BYTES - len(err)])
                    continue
                data = item.data
                if b"\n" not in header:
                    line, newline, data = data.partition(b"\n")
                    header.extend(line + newline)
                    if len(header) > _MAX_HEADER_BYTES:
                        raise _fail("the workspace's commit step printed an unexpected first line")
                pending += data
                usable = len(pending) - len(pending) % 4
                try:
                    chunk = base64.b64decode(pending[:usable], validate=True)
                except binascii.Error as exc:
                    raise _fail(
                        "the workspace's bundle is not valid base64 (something else wrote to its output)"
                    ) from exc
                pending = pending[usable:]
                size += len(chunk)
                if size > MAX_BUNDLE_BYTES:
                    raise _fail(f"the workspace's change is over {MAX_BUNDLE_BYTES >> 20} MiB as a git bundle")
                os.write(fd, chunk)
        finally:
            os.close(fd)
        if code is None:
            raise _fail("the workspace's commit step ended without an exit status; retry")
        fields = dict(part.split("=", 1) for part in header.decode(errors="replace").split()[1:] if "=" in part)
        if pending.strip() or not header.startswith(b"sandbox-bundle "):
            raise _fail("the workspace's commit step printed unexpected output")
        base, head = fields.get("base", ""), fields.get("head", "")
        if any(value and not _SHA.fullmatch(value) for value in (base, head)):
            raise _fail("the workspace's commit step reported a malformed commit id")
        return Received(base, head, code, self._redact(err.decode(errors="replace")).strip())

    async def push(self, base: str, branch: str) -> Pushed:
        """Completes the bundle with the base from the remote, checks it, measures it, pushes its HEAD."""
        await self._git("init", "-q", "--bare", "--template=", str(self._repo), what="preparing the push")
        # A partial clone of the recorded URL: the base's commit and trees now, the blobs that the bundle's
        # deltas and the diff need fetched when needed (a server without filters sends everything).
        for key, value in _PROMISOR_CONFIG:
            await self._git("config", key, value.replace("{url}", self._url), what="preparing the push")
        if base:
            fetch = ("fetch", "-q", "--no-tags", "--depth=1", "--filter=blob:none", "origin", base)
            await self._git(*fetch, what="fetching the base commit")
        await self._git("bundle", "verify", "-q", str(self._bundle), what="checking the workspace's bundle")
        # Only HEAD, its objects checked (fsck); a local file is fetched with the file transport, allowed for this
        # one command.
        await self._git(
            "-c",
            "protocol.file.allow=always",
            "-c",
            "fetch.fsckObjects=true",
            "fetch",
            "-q",
            "--no-tags",
            str(self._bundle),
            "+HEAD:refs/sandbox/head",
            what="reading the workspace's bundle",
        )
        sha = (await self._git("rev-parse", "--verify", "refs/sandbox/head^{commit}", what="reading HEAD")).strip()
        if not _SHA.fullmatch(sha):
            raise _fail("the workspace's bundle holds no commit")
        old = base or EMPTY_TREE
        stat = await self._git("diff", *_DIFF, "--shortstat", old, sha, what="diffing")
        diff = await self._git("diff", *_DIFF, old, sha, what="diffing", limit=MAX_DIFF_BYTES)

        def rejected(message: str) -> ApiError:
            return failed_precondition("PUSH_REJECTED", f"the remote rejected the push of {branch}: {message}")

        try:
            await self._git("push", "-q", self._url, f"{sha}:refs/heads/{branch}", what="", fail=rejected)
        except ApiError:
            # Two replicas finishing one task push the same commit at once: the loser's push fails, yet the
            # branch holds exactly this commit.
            remote = await self._git("ls-remote", "origin", f"refs/heads/{branch}", what="reading the branch")
            if remote.split("\t", 1)[0] != sha:
                raise

        def count(word: str) -> int:
            found = re.search(rf"(\d+) {word}", stat)
            return int(found.group(1)) if found else 0

        return Pushed(sha, count("file"), count("insertion"), count("deletion"), diff)

    async def _git(
        self,
        *args: str,
        what: str,
        limit: int = 16 << 20,
        fail: Callable[[str], ApiError] | None = None,
    ) -> str:
        """Runs git in the private repository with only the settings given here; returns its stdout, at most
        limit bytes (the process is stopped there). A failure is FAILED_PRECONDITION with git's message."""
        options = ["-c", "core.hooksPath=/dev/null", "-c", "protocol.allow=never"]
        for protocol in self._protocols:
            options += ["-c", f"protocol.{protocol}.allow=always"]
        # Every command may talk to the remote (a partial clone fetches missing objects when it needs them).
        options += ["-c", "credential.helper=", "-c", f"credential.helper={_HELPER}"]
        options += ["-c", "http.followRedirects=false", "-c", "credential.interactive=false"]
        git_dir = [] if args[0] == "init" else ["--git-dir", str(self._repo)]
        try:
            process = await asyncio.create_subprocess_exec(
                "git",
                *git_dir,
                *options,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                cwd=self._tmp,
            )
        except FileNotFoundError as exc:
            # An operator's setup problem, said plainly (the provider images carry git).
            raise unavailable("GIT_MISSING", "git is not installed where the provider runs; pushes need it") from exc
        assert process.stdout is not None and process.stderr is not None
        out = bytearray()

        async def read_out() -> None:
            assert process.stdout is not None
            while chunk := await process.stdout.read(65536):
                out.extend(chunk[: limit - len(out)])
                if len(out) >= limit:
                    process.kill()
                    return

        err = bytearray()

        async def read_err() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.read(65536):
                err.extend(chunk[: _MAX_STDERR_BYTES - len(err)])

        try:
            await asyncio.wait_for(asyncio.gather(read_out(), read_err(), process.wait()), GIT_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise _fail(f"git timed out {what or 'pushing'} after {GIT_TIMEOUT_SECONDS:.0f} s") from exc
        if process.returncode != 0 and len(out) < limit:
            stderr = self._redact(err.decode(errors="replace"))
            message = "\n".join(line for line in stderr.splitlines() if line.strip())[-2000:]
            raise fail(message) if fail else _fail(f"{what} failed: {message}")
        return out.decode(errors="replace")
