"""An agent's output is hostile input: whatever it prints, the stream ends with its bytes delivered and its
state, never INTERNAL, and the provider buffers a bounded amount for parsing."""

from __future__ import annotations

import json

import pytest

from orchestrator.local_stack import LocalStack
from provider_kit.agents.catalog import AGENTS
from provider_kit.agents.parsers import MAX_LINE_BYTES, LineParser
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client
from tests.git_server import GitServer
from tests.test_coding import create_with_repo, repo

HOSTILE_LINES = [
    b"not json",
    b"\xff\xfe\x00",
    b"[" * 200_000 + b"]" * 200_000,  # nesting deeper than the JSON decoder's recursion limit
    b'{"type": "assistant", "message": "a string, not an object"}',
    b'{"type": "assistant", "message": {"content": [{"type": "tool_use", "name": 5, "input": {}}]}}',
    b'{"type": "assistant", "message": {"content": "text"}}',
    b'{"type": "result", "usage": {"input_tokens": "many"}}',
    b'{"type": "result", "usage": {"input_tokens": 1e400}}',
    b'{"type": "result", "usage": {"output_tokens": 123456789012345678901234567890}}',
    b'{"type": "result", "session_id": {"nested": true}, "result": [1, {"text": 2}]}',
    b'{"type": "item.completed", "item": "not an object"}',
    b'{"type": "tool_call", "tool_call": [], "subtype": "started"}',
    b'{"type": "tool.execution_start", "data": {"toolName": ["x"]}}',
    b'{"type": "message", "role": "assistant", "content": {"x": 1}}',
    b'{"type": "step_finish", "part": {"tokens": {"input": "x"}}}',
]


@pytest.mark.parametrize("parser_name", sorted({a.output for a in AGENTS.values() if a.parser is not None}))
def test_every_parser_survives_hostile_lines(parser_name: str) -> None:
    agent = next(a for a in AGENTS.values() if a.output == parser_name)
    parser = LineParser(agent.parser)
    for line in HOSTILE_LINES:
        assert isinstance(parser.feed(line + b"\n"), list)
    # Still parses good lines afterwards.
    good = {"type": "result", "result": "ok", "session_id": "s"}
    assert isinstance(parser.feed(json.dumps(good).encode() + b"\n"), list)


def test_a_line_without_end_is_not_buffered_without_bound() -> None:
    parser = LineParser(AGENTS["claude"].parser)
    for _ in range(10):
        parser.feed(b"x" * (MAX_LINE_BYTES // 4))
    assert len(parser._buffer) <= MAX_LINE_BYTES
    # The rest of the overlong line is skipped; the next line parses.
    parser.feed(b"tail of the long line\n")
    events = parser.feed(b'{"type": "result", "result": "after", "session_id": "s"}\n')
    assert [e.text for e in events if e.kind == pb.AgentEvent.KIND_RESULT] == ["after"]


async def test_a_stub_agent_printing_garbage_ends_cleanly(docker_stack: LocalStack, git_server: GitServer) -> None:
    """A `claude` that prints every hostile line: the client gets all the bytes, the exit code, no INTERNAL."""
    client = Client(docker_stack.address, docker_stack.client_token)
    sandbox = await create_with_repo(client, git_server, repo(git_server))
    try:
        payload = b"\n".join(HOSTILE_LINES) + b"\n"
        await client.write_file(sandbox.name, "/tmp/hostile-output", payload)
        stub = b"#!/bin/sh\ncat /tmp/hostile-output\nexit 3\n"
        await client.write_file(sandbox.name, "/usr/local/bin/claude", stub, mode=0o755)
        run = await client.run_agent(
            sandbox.name, "claude", "print garbage", secrets={"ANTHROPIC_API_KEY": "sk-test-not-a-real-key"}
        )
        assert run.finished is not None
        assert (run.finished.state, run.finished.exit_code) == (pb.Execution.STATE_FAILED, 3)
        assert bytes(run.stdout) == payload
    finally:
        await client.delete(sandbox.name)
        await client.close()
