"""sandboxctl, run as a user runs it: a real process against the real stack, checking output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from orchestrator.local_stack import LocalStack
from tests import docker_only
from tests.client import Client
from tests.git_server import GitServer

# These tests run once, on Docker, not on every provider.
stack, client = docker_only.stack, docker_only.client


def sandboxctl(
    stack: LocalStack | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, **(env or {})}
    if stack is not None:
        base |= {"SANDBOXCTL_ADDRESS": stack.address, "SANDBOXCTL_TOKEN": stack.client_token}
    return subprocess.run(
        [sys.executable, "-m", "sandboxctl", *args], env=base, capture_output=True, text=True, timeout=300
    )


def test_providers(stack: LocalStack) -> None:
    result = sandboxctl(stack, "providers")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "docker\tready\n"


def test_run_pushes_and_reports_json(stack: LocalStack, git_server: GitServer) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(name, {"README.md": "hi\n"})
    result = sandboxctl(
        stack, "run", "--json", "--network", "host", "--repo", git_server.url(name),
        "-i", "echo added > added.txt", "--branch", "cli/added", env={"GIT_TOKEN": git_server.token or ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    final = [e["task"] for e in events if "task" in e][-1]
    assert final["phase"] == "PHASE_SUCCEEDED"
    assert final["push"]["branch"] == "cli/added"
    assert git_server.read_file(name, "cli/added", "added.txt") == b"added\n"
    assert (git_server.token or "") not in result.stdout + result.stderr


def test_failed_agent_exits_1_and_bad_input_exits_2(stack: LocalStack, git_server: GitServer) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(name, {"README.md": "hi\n"})
    env = {"GIT_TOKEN": git_server.token or ""}
    failed = sandboxctl(stack, "run", "--network", "host", "--repo", git_server.url(name), "-i", "exit 3", env=env)
    assert failed.returncode == 1
    assert "task failed" in failed.stderr
    bad = sandboxctl(stack, "run", "--repo", "ext::sh -c id", "-i", "true")
    assert bad.returncode == 2
    assert "INVALID_ARGUMENT" in bad.stderr


async def test_exec_list_attach_delete(stack: LocalStack, client: Client) -> None:
    sandbox = (await client.create(labels={"cli": "yes"})).name
    try:
        ran = sandboxctl(stack, "exec", sandbox, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
        assert (ran.returncode, ran.stdout) == (7, "out\n")
        assert "err" in ran.stderr
        listed = sandboxctl(stack, "list", "--label", "cli=yes")
        assert listed.returncode == 0 and listed.stdout.startswith(f"{sandbox}\trunning")
        missing = sandboxctl(stack, "attach", f"{sandbox}/executions/nosuchexecution")
        assert missing.returncode == 3
    finally:
        deleted = sandboxctl(stack, "delete", sandbox)
        assert deleted.returncode == 0
    assert sandboxctl(stack, "exec", sandbox, "--", "true").returncode == 3


async def test_upload_and_download(stack: LocalStack, client: Client, tmp_path: Path) -> None:
    sandbox = (await client.create()).name
    try:
        script = tmp_path / "tool.sh"
        script.write_bytes(b"#!/bin/sh\necho uploaded tool\n")
        uploaded = sandboxctl(stack, "upload", sandbox, str(script), "/tmp/bin/tool.sh", "--mode", "755")
        assert uploaded.returncode == 0, uploaded.stderr
        assert sandboxctl(stack, "exec", sandbox, "--", "/tmp/bin/tool.sh").stdout == "uploaded tool\n"

        copy = tmp_path / "copy.sh"
        assert sandboxctl(stack, "download", sandbox, "/tmp/bin/tool.sh", str(copy)).returncode == 0
        assert copy.read_bytes() == script.read_bytes()
        assert sandboxctl(stack, "download", sandbox, "/tmp/bin/tool.sh").stdout == script.read_text()

        missing = sandboxctl(stack, "download", sandbox, "/tmp/nothing-here", str(tmp_path / "nothing"))
        assert missing.returncode == 3 and "/tmp/nothing-here does not exist" in missing.stderr
        assert sorted(os.listdir(tmp_path)) == ["copy.sh", "tool.sh"]  # no partial file left behind
        assert sandboxctl(stack, "upload", sandbox, str(script), "relative/path").returncode == 2
    finally:
        await client.delete(sandbox)


def test_local_starts_its_own_stack() -> None:
    result = sandboxctl(None, "providers", "--local")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "docker\tready\n"


async def test_create_with_ports_shows_their_urls(stack: LocalStack, client: Client) -> None:
    created = sandboxctl(stack, "create", "--network", "host", "--port", "8731", "--port", "8732")
    assert created.returncode == 0, created.stderr
    sandbox = created.stdout.strip()
    try:
        assert sandbox.startswith("providers/docker/sandboxes/")
        assert "port 8731: http://127.0.0.1:8731\nport 8732: http://127.0.0.1:8732\n" in created.stderr
        assert [e.url for e in (await client.get(sandbox)).endpoints] == [
            "http://127.0.0.1:8731",
            "http://127.0.0.1:8732",
        ]
    finally:
        await client.delete(sandbox)
