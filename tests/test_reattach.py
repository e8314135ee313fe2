"""Executions outlive the replica that streams them: kill it, re-attach elsewhere, lose and repeat nothing."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, Collected
from tests.harness import ProviderHarness

LINES = 40
SCRIPT = f'for i in $(seq 1 {LINES}); do echo "line $i"; echo "err $i" >&2; sleep 0.1; done; exit 3'
EXPECTED_OUT = b"".join(b"line %d\n" % i for i in range(1, LINES + 1))
EXPECTED_ERR = b"".join(b"err %d\n" % i for i in range(1, LINES + 1))


async def _read_some(stream: AsyncIterator[pb.ExecutionEvent], collected: Collected, lines: int) -> None:
    async for event in stream:
        collected.add(event)
        if collected.stdout.count(b"\n") >= lines:
            return
    raise AssertionError("the command ended before the replica was killed")


async def _expect_broken(stream: AsyncIterator[pb.ExecutionEvent], collected: Collected) -> None:
    """Whatever still arrives before the stream breaks counts; then the stream must fail, not end."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in stream:
            collected.add(event)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def _assert_complete(collected: Collected) -> None:
    assert bytes(collected.stdout) == EXPECTED_OUT
    assert bytes(collected.stderr) == EXPECTED_ERR
    assert collected.finished is not None
    assert collected.finished.state == pb.Execution.STATE_FAILED
    assert collected.finished.exit_code == 3


async def test_reattach_through_another_provider_replica(
    make_stack: Callable[..., LocalStack], harness: ProviderHarness
) -> None:
    # Two independent paths to the same backend: orchestrator A -> provider A, B -> B.
    stack_a, stack_b = make_stack(harness), make_stack(harness)
    a = harness.client(stack_a.address, stack_a.client_token)
    b = harness.client(stack_b.address, stack_b.client_token)
    sandbox = (await a.create()).name
    try:
        collected = Collected()
        stream = a.run_stream(sandbox, ["sh", "-c", SCRIPT])
        await _read_some(stream, collected, 5)
        stack_a.provider_processes[0].signal(signal.SIGKILL)
        await _expect_broken(stream, collected)
        assert collected.finished is None
        await b.attach(collected.name, collected)
        _assert_complete(collected)
    finally:
        await b.delete(sandbox)
        await a.close()
        await b.close()


async def test_reattach_through_another_orchestrator_replica(
    make_stack: Callable[..., LocalStack], harness: ProviderHarness
) -> None:
    stack = make_stack(harness, providers=1, orchestrators=2)
    first = harness.client(stack.orchestrator_processes[0].address, stack.client_token)
    second = harness.client(stack.orchestrator_processes[1].address, stack.client_token)
    sandbox = (await second.create()).name
    try:
        collected = Collected()
        stream = first.run_stream(sandbox, ["sh", "-c", SCRIPT])
        await _read_some(stream, collected, 5)
        stack.orchestrator_processes[0].signal(signal.SIGKILL)
        await _expect_broken(stream, collected)
        await second.attach(collected.name, collected)
        _assert_complete(collected)
    finally:
        await second.delete(sandbox)
        await first.close()
        await second.close()


async def test_attach_replays_from_any_offset(client: Client, sandbox: str) -> None:
    done = await client.run(sandbox, ["sh", "-c", "printf abcdefghij; printf 0123456789 >&2"])
    replay = Collected(stdout=bytearray(b"abc"), stderr=bytearray(b"0123456"))
    await client.attach(done.name, replay)
    assert (bytes(replay.stdout), bytes(replay.stderr)) == (b"abcdefghij", b"0123456789")
    assert replay.finished is not None and replay.finished.state == pb.Execution.STATE_SUCCEEDED


# Prints the processes that follow execution argv[1] (the follower shell and its tails), not this probe.
FOLLOWERS = r"""
import os, sys
execution = sys.argv[1].encode()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    follower = argv[4:5] in ([b"start"], [b"attach"]) and argv[6:7] == [execution]
    tail = argv[:1] == [b"tail"] and any(b"/" + execution + b"." in a for a in argv)
    if follower or tail:
        print(pid, argv[0].decode())
"""


async def test_a_client_that_goes_away_leaves_the_command_running_and_no_follower(client: Client, sandbox: str) -> None:
    async def followers(execution: str) -> bytes:
        probe = await client.run(sandbox, ["python3", "-c", FOLLOWERS, execution])
        assert probe.finished is not None and probe.finished.exit_code == 0, bytes(probe.stderr)
        return bytes(probe.stdout)

    name = ""
    request = pb.RunCommandRequest(sandbox=sandbox, argv=["sh", "-c", "sleep 8; echo done"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in client.stub.RunCommand(request, metadata=client.metadata, timeout=2.5):
            if not name:
                name = event.started.name
                # While the client reads, the probe sees the follower (so its silence later means something).
                for _ in range(20):
                    if await followers(name.rsplit("/", 1)[1]):
                        break
                else:
                    raise AssertionError("the probe never saw the follower")
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Within moments nothing follows the command any more: a closed stream alone does not end a follower.
    for _ in range(30):
        left = await followers(name.rsplit("/", 1)[1])
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == b""
    # The command itself goes on, and a re-attach gets all of it.
    running = await client.stub.GetExecution(pb.GetExecutionRequest(name=name), metadata=client.metadata)
    assert running.state == pb.Execution.STATE_RUNNING
    collected = Collected()
    async for event in client.attach_stream(name, collected):
        collected.add(event)
    assert bytes(collected.stdout) == b"done\n"
    assert collected.finished is not None and collected.finished.exit_code == 0
