"""Parsers from each agent's streaming output (JSON lines) to typed AgentEvents.

Parsers are fed complete stdout lines and never fail: a line they do not understand yields nothing (the raw
bytes still reach the client next to the events). The output is the agent's, so it is hostile input: LineParser
bounds what it buffers and drops any line a parser cannot turn into events, whatever the parser raises.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from sandbox.v1 import sandbox_pb2

log = logging.getLogger(__name__)
Event = sandbox_pb2.AgentEvent
# Longer lines are not parsed (their bytes still stream): an agent could otherwise make a provider buffer
# without end by never writing a newline.
MAX_LINE_BYTES = 4 * 1024 * 1024
Parser = Callable[[dict[str, Any]], Iterator[sandbox_pb2.AgentEvent]]


def _text(value: Any) -> str:
    """Tool results come as a string or as a list of content blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(block.get("text", "")) if isinstance(block, dict) else str(block) for block in value)
    return "" if value is None else json.dumps(value)


def _usage(usage: Any, input_key: str = "input_tokens", output_key: str = "output_tokens") -> Iterator[Event]:
    if isinstance(usage, dict) and (input_key in usage or output_key in usage):
        yield Event(
            kind=Event.KIND_USAGE,
            input_tokens=int(usage.get(input_key) or 0),
            output_tokens=int(usage.get(output_key) or 0),
        )


def claude_stream_json(line: dict[str, Any]) -> Iterator[Event]:
    """Claude Code and Cursor `--output-format stream-json` (the same shape)."""
    kind = line.get("type")
    if kind == "system" and line.get("subtype") == "init":
        yield Event(kind=Event.KIND_SESSION, session_id=str(line.get("session_id", "")))
    elif kind in ("assistant", "user"):
        message = line.get("message") or {}
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and kind == "assistant":
                yield Event(kind=Event.KIND_TEXT, text=block.get("text", ""))
            elif block.get("type") == "tool_use":
                yield Event(
                    kind=Event.KIND_TOOL_CALL,
                    tool_name=block.get("name", ""),
                    tool_input=json.dumps(block.get("input", {})),
                )
            elif block.get("type") == "tool_result":
                yield Event(
                    kind=Event.KIND_TOOL_RESULT, text=_text(block.get("content")), is_error=bool(block.get("is_error"))
                )
    elif kind == "tool_call":  # Cursor reports tool calls as their own events
        call = line.get("tool_call") or {}
        name = next(iter(call), "")
        detail = call.get(name) or {}
        if line.get("subtype") == "started":
            yield Event(kind=Event.KIND_TOOL_CALL, tool_name=name, tool_input=json.dumps(detail.get("args", {})))
        else:
            yield Event(kind=Event.KIND_TOOL_RESULT, tool_name=name, text=_text(detail.get("result")))
    elif kind == "result":
        yield from _usage(line.get("usage"))
        yield Event(
            kind=Event.KIND_RESULT,
            text=_text(line.get("result")),
            is_error=bool(line.get("is_error")),
            session_id=str(line.get("session_id", "")),
        )


def codex_json(line: dict[str, Any]) -> Iterator[Event]:
    """Codex `exec --json` (thread/turn/item events)."""
    kind = line.get("type", "")
    item = line.get("item") or {}
    item_type = item.get("type")
    if kind == "thread.started":
        yield Event(kind=Event.KIND_SESSION, session_id=str(line.get("thread_id", "")))
    elif kind == "item.completed" and item_type == "agent_message":
        yield Event(kind=Event.KIND_TEXT, text=item.get("text", ""))
    elif kind == "item.started" and item_type == "command_execution":
        yield Event(
            kind=Event.KIND_TOOL_CALL, tool_name="shell", tool_input=json.dumps({"command": item.get("command")})
        )
    elif kind == "item.completed" and item_type == "command_execution":
        yield Event(
            kind=Event.KIND_TOOL_RESULT,
            tool_name="shell",
            text=_text(item.get("aggregated_output")),
            is_error=item.get("exit_code") not in (0, None),
        )
    elif kind == "item.completed" and item_type == "file_change":
        yield Event(kind=Event.KIND_TOOL_CALL, tool_name="file_change", tool_input=json.dumps(item.get("changes")))
    elif kind == "item.started" and item_type == "mcp_tool_call":
        yield Event(
            kind=Event.KIND_TOOL_CALL,
            tool_name=f"{item.get('server')}.{item.get('tool')}",
            tool_input=json.dumps(item.get("arguments")),
        )
    elif kind == "turn.completed":
        yield from _usage(line.get("usage"))
        yield Event(kind=Event.KIND_RESULT)
    elif kind in ("turn.failed", "error"):
        error = line.get("error") or {}
        yield Event(kind=Event.KIND_RESULT, is_error=True, text=str(error.get("message") or line.get("message", "")))


def gemini_stream_json(line: dict[str, Any]) -> Iterator[Event]:
    """Gemini CLI `--output-format stream-json`."""
    kind = line.get("type")
    if kind == "init":
        yield Event(kind=Event.KIND_SESSION, session_id=str(line.get("session_id", "")))
    elif kind == "message" and line.get("role") == "assistant":
        yield Event(kind=Event.KIND_TEXT, text=_text(line.get("content")))
    elif kind == "tool_use":
        yield Event(
            kind=Event.KIND_TOOL_CALL,
            tool_name=line.get("tool_name", ""),
            tool_input=json.dumps(line.get("parameters", {})),
        )
    elif kind == "tool_result":
        yield Event(kind=Event.KIND_TOOL_RESULT, text=_text(line.get("output")), is_error=line.get("status") == "error")
    elif kind == "result":
        yield from _usage(line.get("stats"))
        yield Event(kind=Event.KIND_RESULT, is_error=line.get("status") not in ("success", None))
    elif kind == "error":
        yield Event(kind=Event.KIND_RESULT, is_error=True, text=_text(line.get("message")))


def opencode_json(line: dict[str, Any]) -> Iterator[Event]:
    """opencode `run --format json`."""
    kind = line.get("type")
    part = line.get("part") or {}
    if kind == "step_start" and line.get("sessionID"):
        yield Event(kind=Event.KIND_SESSION, session_id=str(line["sessionID"]))
    elif kind == "text":
        yield Event(kind=Event.KIND_TEXT, text=part.get("text", ""))
    elif kind == "tool_use":
        state = part.get("state") or {}
        yield Event(
            kind=Event.KIND_TOOL_CALL, tool_name=part.get("tool", ""), tool_input=json.dumps(state.get("input"))
        )
        if state.get("status") in ("completed", "error"):
            yield Event(
                kind=Event.KIND_TOOL_RESULT,
                tool_name=part.get("tool", ""),
                text=_text(state.get("output")),
                is_error=state.get("status") == "error",
            )
    elif kind == "step_finish":
        tokens = part.get("tokens") or {}
        yield from _usage(tokens, "input", "output")
    elif kind == "error":
        yield Event(kind=Event.KIND_RESULT, is_error=True, text=_text(line.get("error")))


def copilot_json(line: dict[str, Any]) -> Iterator[Event]:
    """GitHub Copilot CLI `--output-format json`."""
    kind = line.get("type")
    data = line.get("data") or {}
    if kind == "assistant.message":
        if data.get("content"):
            yield Event(kind=Event.KIND_TEXT, text=_text(data.get("content")))
    elif kind == "tool.execution_start":
        yield Event(
            kind=Event.KIND_TOOL_CALL, tool_name=data.get("toolName", ""), tool_input=json.dumps(data.get("arguments"))
        )
    elif kind == "tool.execution_complete":
        yield Event(
            kind=Event.KIND_TOOL_RESULT,
            tool_name=data.get("toolName", ""),
            text=_text(data.get("result")),
            is_error=data.get("success") is False,
        )
    elif kind == "result":
        yield Event(
            kind=Event.KIND_RESULT,
            session_id=str(line.get("sessionId", "")),
            is_error=line.get("exitCode") not in (0, None),
        )


PARSERS: dict[str, Parser] = {
    "copilot-json": copilot_json,
    "claude-stream-json": claude_stream_json,
    "codex-json": codex_json,
    "gemini-stream-json": gemini_stream_json,
    "opencode-json": opencode_json,
}


class LineParser:
    """Turns a byte stream into AgentEvents, one complete line at a time."""

    def __init__(self, parser: Parser | None, *, mid_line: bool = False) -> None:
        self._parser = parser
        self._buffer = bytearray()
        # When re-attaching from an offset, the first partial line cannot be parsed: skip it. The same for
        # the rest of a line that grew past MAX_LINE_BYTES.
        self._skipping = mid_line

    def feed(self, data: bytes) -> list[Event]:
        if self._parser is None:
            return []
        self._buffer.extend(data)
        events: list[Event] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._skipping:
                self._skipping = False
                continue
            events.extend(self._parse(line))
        if len(self._buffer) > MAX_LINE_BYTES:
            self._buffer.clear()
            self._skipping = True
        return events

    def _parse(self, line: bytes) -> list[Event]:
        assert self._parser is not None
        try:
            decoded = json.loads(line)
            return list(self._parser(decoded)) if isinstance(decoded, dict) else []
        except Exception as exc:
            # Any line, however malformed (deep nesting, wrong types, numbers out of range), must not end the
            # stream: it is the agent's output, not ours. Its bytes still reach the client.
            log.debug("agent output line not parsed: %s", type(exc).__name__)
            return []
