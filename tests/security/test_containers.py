"""Issue 11, point 5 and the process half of point 9: what a hostile command can do with the container it gets.

Every test talks to a real stack over gRPC and checks from inside a real Docker sandbox: capabilities, raw
sockets, no-new-privileges, who may have host networking, and that no process of an execution outlives it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable

import docker
import grpc
import pytest

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, expect_error
from tests.harness import ProviderHarness

# CHOWN, DAC_OVERRIDE, FOWNER, KILL, SETGID, SETUID (bits 0, 1, 3, 5, 6, 7): the set provider_docker keeps.
KEPT_CAPABILITIES = f"{(1 << 0) | (1 << 1) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7):016x}"
STRANGER_TOKEN = secrets.token_urlsafe(24)

RAW_SOCKETS = r"""
import socket
for name, args in [
    ("packet", (socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))),  # a sniffer on every interface, lo too
    ("icmp", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),  # ping's raw socket
    ("raw-tcp", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)),
]:
    try:
        socket.socket(*args).close()
        print(name, "opened")
    except PermissionError:
        print(name, "refused")
"""


@pytest.fixture
async def host_sandbox(docker_rpc: Client) -> AsyncIterator[str]:
    created = await docker_rpc.create(spec=pb.SandboxSpec(network_mode="host"))
    assert created.spec.network_mode == "host"
    yield created.name
    await docker_rpc.delete(created.name)


async def test_a_host_network_sandbox_cannot_sniff(docker_rpc: Client, host_sandbox: str) -> None:
    result = await docker_rpc.run(host_sandbox, ["python3", "-c", RAW_SOCKETS])
    assert bytes(result.stdout).decode().split("\n") == ["packet refused", "icmp refused", "raw-tcp refused", ""]
    # As the agent user too (it could only have less).
    result = await docker_rpc.run(host_sandbox, ["runuser", "-u", "agent", "--", "python3", "-c", RAW_SOCKETS])
    assert bytes(result.stdout).count(b"refused") == 3, bytes(result.stderr)


async def test_commands_keep_only_the_capabilities_a_coding_sandbox_needs(
    docker_rpc: Client, host_sandbox: str, docker_client: docker.DockerClient
) -> None:
    status_lines = ["grep", "-E", "^(CapEff|CapBnd|CapPrm|NoNewPrivs):", "/proc/self/status"]
    result = await docker_rpc.run(host_sandbox, status_lines)
    status = dict(line.split(":\t") for line in bytes(result.stdout).decode().splitlines())
    kept = KEPT_CAPABILITIES
    assert status == {"CapPrm": kept, "CapEff": kept, "CapBnd": kept, "NoNewPrivs": "1"}
    # no-new-privileges: a setuid binary gives the agent user nothing (su is setuid root in every Debian).
    result = await docker_rpc.run(
        host_sandbox, ["runuser", "-u", "agent", "--", "sh", "-c", "grep NoNewPrivs /proc/self/status; su -c id root"]
    )
    assert bytes(result.stdout).startswith(b"NoNewPrivs:\t1\n") and b"uid=0" not in bytes(result.stdout)
    # The engine's own record says the same (what an operator's audit reads).
    config = docker_client.containers.get(host_sandbox.rsplit("/", 1)[1]).attrs["HostConfig"]
    assert config["CapDrop"] == ["ALL"] and "NET_RAW" not in config["CapAdd"]
    assert config["SecurityOpt"] == ["no-new-privileges"]


async def test_the_coding_workflow_still_works_as_root_and_as_agent(docker_rpc: Client, host_sandbox: str) -> None:
    # What the platform's scripts do as root with the kept capabilities: give a directory to the agent user,
    # write into it, switch to the agent user, kill its processes.
    script = (
        "set -e; mkdir -p /workspace/x && chown -R agent: /workspace/x; "
        "runuser -u agent -- sh -c 'echo a > /workspace/x/f; chmod 700 /workspace/x'; "
        "echo b >> /workspace/x/f; touch -d @0 /workspace/x/f; cat /workspace/x/f; "
        "runuser -u agent -- sleep 300 & sleep 0.2; kill %1; wait %1 || echo killed"
    )
    result = await docker_rpc.run(host_sandbox, ["bash", "-c", script])
    assert bytes(result.stdout) == b"a\nb\nkilled\n", bytes(result.stderr)


async def test_host_networking_is_granted_by_the_operator_per_tenant(
    make_stack: Callable[..., LocalStack], harnesses: Callable[[str], ProviderHarness]
) -> None:
    docker = harnesses("docker")
    stack = make_stack(docker, extra_tokens={STRANGER_TOKEN: "stranger"})
    stranger = Client(stack.address, STRANGER_TOKEN)
    allowed = Client(stack.address, stack.client_token)
    try:
        err = await expect_error(
            stranger.create(spec=pb.SandboxSpec(network_mode="host")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NETWORK_MODE_NOT_ALLOWED",
        )
        assert "SANDBOX_DOCKER_HOST_NETWORK_TENANTS" in (err.details() or "")
        # The tenant's default is the first mode it may use, never host (the harness lists host first).
        created = await stranger.create(spec=pb.SandboxSpec())
        try:
            assert created.spec.network_mode == "none"
        finally:
            await stranger.delete(created.name)
        # The operator named the stack's own tenant: it gets host, by default too.
        created = await allowed.create(spec=pb.SandboxSpec())
        try:
            assert created.spec.network_mode == "host"
        finally:
            await allowed.delete(created.name)
    finally:
        await stranger.close()
        await allowed.close()
        stack.stop()


def test_host_networking_needs_the_operators_word() -> None:
    from provider_docker.settings import DockerSettings

    def modes(**env: str) -> list[str]:
        return DockerSettings(provider_token="x" * 16, **env).network_modes_for("t1")  # type: ignore[arg-type]

    assert modes() == ["bridge", "none"]
    assert modes(docker_network_modes="host,none") == ["none"]
    assert modes(docker_host_network_tenants="t2,t1") == ["bridge", "none", "host"]
    assert modes(docker_host_network_tenants="*", docker_network_modes="host,none") == ["host", "none"]


# Every process of the bomb carries this in its command line (a fork copies it).
BOMB_MARK = "forkbomb-h1"
# Counts the processes of the sandbox whose command line (arguments joined by spaces) matches a pattern.
COUNT_PROCESSES = r"""
import glob, os, re, sys
count = 0
for path in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        args = open(path, "rb").read().rstrip(b"\0").split(b"\0")
    except OSError:
        continue  # ended meanwhile
    if path != f"/proc/{os.getpid()}/cmdline" and re.search(sys.argv[1].encode(), b" ".join(args)):
        count += 1
print(count)
"""


async def _count_processes(client: Client, sandbox: str, pattern: str) -> int:
    result = await client.run(sandbox, ["python3", "-c", COUNT_PROCESSES, pattern])
    assert result.finished is not None and result.finished.state == pb.Execution.STATE_SUCCEEDED, result.stderr
    return int(bytes(result.stdout))


async def test_a_fork_bomb_dies_with_its_execution(docker_rpc: Client) -> None:
    created = await docker_rpc.create(spec=pb.SandboxSpec(network_mode="host", pids_limit=200, milli_cpus=500))
    try:
        # The bomb runs in the background of a command that ends by itself 3 s later, with the bomb at the
        # pids limit; sleep is started first so that the command can end at all.
        bomb = "sleep 3 & s=$!; b() { b | b & }; b & wait $s; exit 0"
        result = await docker_rpc.run(created.name, ["bash", "-c", bomb, BOMB_MARK], timeout={"seconds": 30})
        assert result.finished is not None
        assert result.finished.state == pb.Execution.STATE_SUCCEEDED, result.finished
        ended = time.monotonic()
        # The sandbox works again within seconds (a command needs pids), and nothing of the bomb is left.
        while True:
            try:
                ok = await docker_rpc.run(created.name, ["echo", "ok"])
                if ok.finished is not None and ok.finished.state == pb.Execution.STATE_SUCCEEDED:
                    break
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() - ended < 10, "the sandbox did not recover from the fork bomb"
            await asyncio.sleep(0.5)
        assert bytes(ok.stdout) == b"ok\n"
        assert await _count_processes(docker_rpc, created.name, f"^bash -c sleep 3 .* {BOMB_MARK}$") == 0
    finally:
        await docker_rpc.delete(created.name)


async def test_background_processes_end_with_their_execution(docker_rpc: Client, host_sandbox: str) -> None:
    # The count sees what is there: a server detached on purpose (setsid) leaves the group, and stays.
    await docker_rpc.run(host_sandbox, ["sh", "-c", "setsid nohup sleep 999 >/dev/null 2>&1 &"])
    assert await _count_processes(docker_rpc, host_sandbox, "^sleep 999$") == 1
    # A plain background job, and one that ignores SIGTERM; both were left running before.
    script = "sleep 1000 & (trap '' TERM; exec sleep 1001) & echo started"
    result = await docker_rpc.run(host_sandbox, ["bash", "-c", script])
    assert bytes(result.stdout) == b"started\n"
    assert result.finished is not None and result.finished.state == pb.Execution.STATE_SUCCEEDED
    assert await _count_processes(docker_rpc, host_sandbox, "^sleep 100[01]$") == 0
    # After a timeout too.
    result = await docker_rpc.run(
        host_sandbox, ["bash", "-c", "sleep 1002 & trap '' TERM; sleep 1003"], timeout={"seconds": 1}
    )
    assert result.finished is not None and result.finished.state == pb.Execution.STATE_TIMED_OUT
    assert await _count_processes(docker_rpc, host_sandbox, "^sleep 100[23]$") == 0
