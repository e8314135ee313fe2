"""Agent output parsers on the event shapes each CLI documents (Claude and Codex are also covered end to end
with the real CLIs in test_agents.py; the others cannot run here without their vendors' services)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from provider_kit.agents import AGENTS
from provider_kit.agents.parsers import LineParser
from sandbox.v1 import sandbox_pb2 as pb

K = pb.AgentEvent


@pytest.fixture(autouse=True)
def no_leaked_containers() -> Iterator[None]:
    """These tests start no container, so they do not need the Docker engine the shared check uses."""
    yield


SAMPLES: dict[str, tuple[list[dict[str, object]], list[tuple[int, str]]]] = {
    "gemini": (
        [
            {"type": "init", "session_id": "g-1", "model": "gemini-x"},
            {"type": "message", "role": "assistant", "content": "Working", "delta": True},
            {"type": "tool_use", "tool_name": "write_file", "tool_id": "t1", "parameters": {"file_path": "a"}},
            {"type": "tool_result", "tool_id": "t1", "status": "success", "output": "ok"},
            {"type": "result", "status": "success", "stats": {"input_tokens": 7, "output_tokens": 3}},
        ],
        [
            (K.KIND_SESSION, "g-1"),
            (K.KIND_TEXT, "Working"),
            (K.KIND_TOOL_CALL, "write_file"),
            (K.KIND_TOOL_RESULT, "ok"),
            (K.KIND_USAGE, "7/3"),
            (K.KIND_RESULT, ""),
        ],
    ),
    "opencode": (
        [
            {"type": "step_start", "sessionID": "ses_1", "part": {}},
            {"type": "text", "sessionID": "ses_1", "part": {"type": "text", "text": "Hi"}},
            {
                "type": "tool_use",
                "sessionID": "ses_1",
                "part": {"tool": "bash", "state": {"status": "completed", "input": {"command": "ls"}, "output": "a"}},
            },
            {"type": "step_finish", "part": {"tokens": {"input": 5, "output": 2}}},
        ],
        [
            (K.KIND_SESSION, "ses_1"),
            (K.KIND_TEXT, "Hi"),
            (K.KIND_TOOL_CALL, "bash"),
            (K.KIND_TOOL_RESULT, "a"),
            (K.KIND_USAGE, "5/2"),
        ],
    ),
    "copilot": (
        [
            {"type": "assistant.message", "data": {"content": "Done it"}},
            {"type": "tool.execution_start", "data": {"toolName": "bash", "arguments": {"command": "ls"}}},
            {"type": "tool.execution_complete", "data": {"toolName": "bash", "success": True, "result": "x"}},
            {"type": "result", "sessionId": "c-9", "exitCode": 0},
        ],
        [(K.KIND_TEXT, "Done it"), (K.KIND_TOOL_CALL, "bash"), (K.KIND_TOOL_RESULT, "x"), (K.KIND_RESULT, "c-9")],
    ),
    "cursor": (
        [
            {"type": "system", "subtype": "init", "session_id": "cu-1"},
            {"type": "assistant", "message": {"content": [{"type": "text", "text": "Plan"}]}},
            {"type": "tool_call", "subtype": "started", "tool_call": {"shellToolCall": {"args": {"command": "ls"}}}},
            {
                "type": "tool_call",
                "subtype": "completed",
                "tool_call": {"shellToolCall": {"result": {"success": {"stdout": "a"}}}},
            },
            {"type": "result", "subtype": "success", "is_error": False, "result": "Final", "session_id": "cu-1"},
        ],
        [
            (K.KIND_SESSION, "cu-1"),
            (K.KIND_TEXT, "Plan"),
            (K.KIND_TOOL_CALL, "shellToolCall"),
            (K.KIND_TOOL_RESULT, '{"success": {"stdout": "a"}}'),
            (K.KIND_RESULT, "Final"),
        ],
    ),
}


def summary(event: pb.AgentEvent) -> tuple[int, str]:
    if event.kind == K.KIND_SESSION:
        return event.kind, event.session_id
    if event.kind == K.KIND_USAGE:
        return event.kind, f"{event.input_tokens}/{event.output_tokens}"
    if event.kind == K.KIND_TOOL_CALL:
        return event.kind, event.tool_name
    if event.kind == K.KIND_TOOL_RESULT:
        return event.kind, event.text or event.tool_name
    if event.kind == K.KIND_RESULT:
        return event.kind, event.text or event.session_id
    return event.kind, event.text


@pytest.mark.parametrize("agent", sorted(SAMPLES))
def test_documented_events_parse(agent: str) -> None:
    lines, expected = SAMPLES[agent]
    stream = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    parser = LineParser(AGENTS[agent].parser)
    # Fed in awkward pieces, as a stream arrives: lines split across chunks must still parse.
    events = [event for i in range(0, len(stream), 7) for event in parser.feed(stream[i : i + 7])]
    assert [summary(e) for e in events] == expected


def test_garbage_and_partial_lines_are_ignored() -> None:
    parser = LineParser(AGENTS["claude"].parser, mid_line=True)
    assert parser.feed(b'tail of a line cut by an offset"}\nnot json\n{"type": "unknown"}\n') == []
    assert parser.feed(b'{"type": "system", "subtype": "init", "session_id": "s"}') == []  # no newline yet
    assert [e.session_id for e in parser.feed(b"\n")] == ["s"]
