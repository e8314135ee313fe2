"""A scripted model endpoint for driving the real agent CLIs offline.

`FakeModel` is a real HTTP server on 127.0.0.1 (port chosen by the kernel) that speaks enough of two APIs:

- Anthropic Messages (`POST /v1/messages`, also with `?beta=true`; Claude Code), streamed (SSE) or not, and
- OpenAI Responses (`POST /v1/responses`; Codex with `wire_api = "responses"`), streamed (SSE) or not.

It plays a two-turn `Script` on every agent conversation: the first reply is a tool call that writes
`script.content` to `script.file_path` (Claude: a `Write` tool_use; Codex: an `exec_command` / `shell` function
call whose command writes the file), and once the tool's result comes back, a final text reply
(`script.final_text`) that ends the run. Which turn to play is decided from the request itself (is there a
tool result for our call in the conversation?), so the server keeps no per-conversation state and resumed
sessions work too. Requests that carry no tools (Claude Code's side queries such as title generation) get a
short text reply.

Every request is recorded (method, path, query, headers, raw body and parsed JSON) in `FakeModel.requests`,
so tests can assert which API key arrived, which tools (MCP servers included) the agent offered, and what
instruction text arrived. Start-up endpoints (model lists, token counting) get harmless answers; any other
path gets a 404 and is listed in `FakeModel.unknown_paths`.

    script = Script(file_path="hello.txt", content="hi\\n", final_text="All done.")
    with FakeModel(script) as model:
        ...  # run the CLI with ANTHROPIC_BASE_URL=model.url (Claude) or base_url=model.url + "/v1" (Codex)
        body = model.model_requests("anthropic")[0].json
"""

from __future__ import annotations

import gzip
import json
import logging
import posixpath
import re
import shlex
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

Api = Literal["anthropic", "openai"]
ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/responses"
DEFAULT_MODEL = "fake-model"


@dataclass(frozen=True)
class Script:
    """What the fake model makes the agent do: write `content` to `file_path`, then say `final_text`.

    `file_path` may be relative: Codex runs its command in its working directory; for Claude Code (whose
    `Write` tool wants an absolute path) it is joined to the working directory that Claude's system prompt
    names, or to `workdir` when the prompt names none.
    """

    file_path: str = "hello.txt"
    content: str = "hello from the fake model\n"
    final_text: str = "Done: wrote the file."
    workdir: str = "/workspace"
    # Text of the reply to requests that offer no tools (side queries).
    side_text: str = "ok"
    # When set, every model-API call is answered with this HTTP status and an API error body instead (use a
    # status the CLIs do not retry, such as 400 or 401, to see how they fail).
    error_status: int | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes  # decoded from Content-Encoding gzip/deflate when sent so
    json: Any  # the parsed body, or None when it is not JSON
    time: float = field(default_factory=time.time)

    @property
    def api(self) -> Api | None:
        if self.method == "POST" and self.path == ANTHROPIC_PATH:
            return "anthropic"
        if self.method == "POST" and self.path == OPENAI_PATH:
            return "openai"
        return None

    def tools(self) -> list[dict[str, Any]]:
        """The tool definitions the agent offered: the body's `tools`, plus (Responses API) the tools of any
        `additional_tools` input item, where Codex puts them for models it knows (see `tool_names`)."""
        body = self.json if isinstance(self.json, dict) else {}
        tools = list(body.get("tools") or [])
        items = body.get("input")
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict) and item.get("type") == "additional_tools":
                    tools.extend(item.get("tools") or [])
        return tools

    def tool_names(self) -> list[str]:
        """Names of the tools the agent offered. Claude Code names MCP tools `mcp__SERVER__TOOL`; Codex sends
        each MCP server as a namespace tool, listed here as `mcp__SERVER` and `mcp__SERVER.TOOL`."""
        names: list[str] = []

        def walk(tools: list[dict[str, Any]], prefix: str) -> None:
            for tool in tools:
                name = tool.get("name") or (tool.get("function") or {}).get("name")
                if name:
                    names.append(prefix + name)
                if tool.get("type") == "namespace":  # Codex groups tools: {"type": "namespace", "tools": [...]}
                    walk(tool.get("tools") or [], f"{prefix}{name}.")

        walk(self.tools(), "")
        return names

    def texts(self) -> list[str]:
        """Every text the request carries in its user turns, in order (each block as sent, byte for byte)."""
        body = self.json or {}
        out: list[str] = []
        if self.api == "anthropic":
            for message in body.get("messages") or []:
                if message.get("role") != "user":
                    continue
                content = message.get("content")
                if isinstance(content, str):
                    out.append(content)
                    continue
                for block in content or []:
                    if block.get("type") == "text":
                        out.append(block.get("text", ""))
        elif self.api == "openai":
            items = body.get("input")
            if isinstance(items, str):
                return [items]
            for item in items or []:
                if item.get("type", "message") != "message" or item.get("role") != "user":
                    continue
                content = item.get("content")
                if isinstance(content, str):
                    out.append(content)
                    continue
                for block in content or []:
                    if block.get("type") in ("input_text", "text"):
                        out.append(block.get("text", ""))
        return out


class FakeModel:
    """The server. Use as a context manager, or call `start()` and `stop()`."""

    def __init__(self, script: Script | None = None, host: str = "127.0.0.1") -> None:
        self.script = script or Script()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._unknown: list[str] = []
        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake_model = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL without a path: `ANTHROPIC_BASE_URL` for Claude; Codex's `base_url` is `url + "/v1"`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeModel:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="fake-model", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read -------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def model_requests(self, api: Api | None = None) -> list[RecordedRequest]:
        """The model-API calls (`/v1/messages`, `/v1/responses`), optionally of one API only."""
        return [r for r in self.requests if r.api is not None and (api is None or r.api == api)]

    def agent_requests(self, api: Api | None = None) -> list[RecordedRequest]:
        """The model-API calls that offered tools: the agent's own turns, not side queries."""
        return [r for r in self.model_requests(api) if r.tool_names()]

    @property
    def unknown_paths(self) -> list[str]:
        """`METHOD /path` of every request that the server did not know (answered 404)."""
        with self._lock:
            return list(self._unknown)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._unknown.clear()

    # -- internals -------------------------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _record_unknown(self, what: str) -> None:
        log.warning("fake model: unknown request %s", what)
        with self._lock:
            self._unknown.append(what)


# -- the HTTP layer ------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    timeout = 120  # seconds an idle keep-alive connection keeps its thread
    server_version = "fake-model/1"

    @property
    def model(self) -> FakeModel:
        return self.server.fake_model  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake model: " + format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding:
            self.model._record_unknown(f"Content-Encoding {encoding} on {self.command} {self.path}")
        return body

    def _handle(self) -> None:
        split = urlsplit(self.path)
        body = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers=headers,
            body=body,
            json=parsed,
        )
        self.model._record(request)
        try:
            status, content_type, payload = _route(self.model, request)
        except Exception:  # a bug here must show in the test's log, not hang the CLI
            log.exception("fake model: failed to answer %s %s", self.command, self.path)
            status, content_type, payload = 500, "application/json", _error_json("fake model failed")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if content_type.startswith("text/event-stream"):
            self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
            self.wfile.flush()


def _route(model: FakeModel, request: RecordedRequest) -> tuple[int, str, bytes]:
    path, method = request.path, request.method
    if request.api is not None and model.script.error_status is not None:
        status = model.script.error_status
        return status, "application/json", _error_json(f"fake model: scripted error {status}", request.api)
    if request.api == "anthropic":
        return _anthropic_reply(model.script, request)
    if request.api == "openai":
        return _openai_reply(model.script, request)
    if method == "POST" and path == "/v1/messages/count_tokens":
        return 200, "application/json", _json({"input_tokens": 100})
    if method == "GET" and path in ("/v1/models", "/models"):
        return 200, "application/json", _json(_model_list(request))
    if method in ("GET", "HEAD") and path in ("/", "/health", "/healthz"):
        return 200, "application/json", _json({"ok": True})
    model._record_unknown(f"{method} {path}")
    return 404, "application/json", _error_json(f"fake model: no route for {method} {path}")


def _model_list(request: RecordedRequest) -> dict[str, Any]:
    model = DEFAULT_MODEL
    # One list that reads as both APIs' shape (Anthropic: data/has_more; OpenAI: object/data; Codex: models).
    entry = {
        "type": "model",
        "id": model,
        "object": "model",
        "display_name": model,
        "created_at": "2025-01-01T00:00:00Z",
        "created": 1735689600,
        "owned_by": "fake",
    }
    return {"object": "list", "data": [entry], "has_more": False, "first_id": model, "last_id": model, "models": []}


# -- Anthropic Messages API ----------------------------------------------------------------------------------

_WORKDIR_RE = re.compile(r"[Ww]orking directory: (/\S*)")


def _anthropic_reply(script: Script, request: RecordedRequest) -> tuple[int, str, bytes]:
    body = request.json or {}
    model = body.get("model") or DEFAULT_MODEL
    tools = {tool.get("name"): tool for tool in body.get("tools") or []}
    messages = body.get("messages") or []
    if not tools:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": script.side_text}]
        stop = "end_turn"
    elif _anthropic_has_tool_result(messages):
        blocks = [{"type": "text", "text": script.final_text}]
        stop = "end_turn"
    else:
        path = script.file_path
        if not path.startswith("/"):
            match = _WORKDIR_RE.search(_anthropic_system_text(body))
            path = posixpath.join(match.group(1) if match else script.workdir, path)
        if "Write" in tools:
            call = {"name": "Write", "input": {"file_path": path, "content": script.content}}
        elif "Bash" in tools:
            command = f"printf %s {shlex.quote(script.content)} > {shlex.quote(path)}"
            call = {"name": "Bash", "input": {"command": command, "description": "Write the file"}}
        else:
            return 400, "application/json", _error_json(f"no Write or Bash tool among {sorted(tools)}")
        blocks = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", **call}]
        stop = "tool_use"
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    if not body.get("stream"):
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        return 200, "application/json", _json(message)
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": 1},
                },
            },
        )
    ]
    for index, block in enumerate(blocks):
        start: dict[str, Any]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return 200, "text/event-stream; charset=utf-8", _sse(events)


def _anthropic_has_tool_result(messages: list[dict[str, Any]]) -> bool:
    """Whether the latest user turn answers a tool call (so the agent has done its step)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        return isinstance(content, list) and any(block.get("type") == "tool_result" for block in content)
    return False


def _anthropic_system_text(body: dict[str, Any]) -> str:
    system = body.get("system")
    if isinstance(system, str):
        return system
    texts = [block.get("text", "") for block in system or [] if isinstance(block, dict)]
    # Claude Code also states the working directory in a system-reminder inside the first user message.
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(block.get("text", "") for block in content or [] if isinstance(block, dict))
    return "\n".join(texts)


# -- OpenAI Responses API ------------------------------------------------------------------------------------


def _openai_reply(script: Script, request: RecordedRequest) -> tuple[int, str, bytes]:
    body = request.json or {}
    model = body.get("model") or DEFAULT_MODEL
    tools = {_openai_tool_name(tool): tool for tool in body.get("tools") or []}
    if not tools and request.tools():
        # Codex's "code mode" (models it has metadata for): one freeform `exec` tool that runs JavaScript.
        # Not scripted here; configure Codex with a model name it does not know (e.g. "fake-model").
        return 400, "application/json", _error_json("fake model: only top-level function tools are scripted")
    has_output = _openai_has_tool_output(body.get("input"))
    output: list[dict[str, Any]]
    if not tools or has_output:
        text = script.final_text if tools else script.side_text
        output = [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    else:
        command = f"printf %s {shlex.quote(script.content)} > {shlex.quote(script.file_path)}"
        arguments: dict[str, Any]
        if "exec_command" in tools:
            name, arguments = "exec_command", {"cmd": command}
        elif "shell_command" in tools:
            name, arguments = "shell_command", {"command": command}
        elif "shell" in tools:
            name, arguments = "shell", {"command": ["bash", "-lc", command]}
        else:
            return 400, "application/json", _error_json(f"no exec_command or shell tool among {sorted(tools)}")
        output = [
            {
                "type": "function_call",
                "id": f"fc_{uuid.uuid4().hex[:24]}",
                "call_id": f"call_{uuid.uuid4().hex[:24]}",
                "name": name,
                "arguments": json.dumps(arguments),
                "status": "completed",
            }
        ]
    response_id = f"resp_{uuid.uuid4().hex[:24]}"
    usage = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": None,
    }
    if not body.get("stream"):
        return 200, "application/json", _json(response)
    in_progress = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"type": "response.created", "response": in_progress}),
        ("response.in_progress", {"type": "response.in_progress", "response": in_progress}),
    ]
    for index, item in enumerate(output):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            events.append(
                (
                    "response.output_item.added",
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "status": "in_progress", "content": []},
                    },
                )
            )
            part = {"type": "output_text", "text": "", "annotations": []}
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events += [
                ("response.content_part.added", {"type": "response.content_part.added", **common, "part": part}),
                ("response.output_text.delta", {"type": "response.output_text.delta", **common, "delta": text}),
                ("response.output_text.done", {"type": "response.output_text.done", **common, "text": text}),
                (
                    "response.content_part.done",
                    {"type": "response.content_part.done", **common, "part": {**part, "text": text}},
                ),
            ]
        else:
            events.append(
                (
                    "response.output_item.added",
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "status": "in_progress", "arguments": ""},
                    },
                )
            )
            common = {"item_id": item["id"], "output_index": index}
            events += [
                (
                    "response.function_call_arguments.delta",
                    {"type": "response.function_call_arguments.delta", **common, "delta": item["arguments"]},
                ),
                (
                    "response.function_call_arguments.done",
                    {"type": "response.function_call_arguments.done", **common, "arguments": item["arguments"]},
                ),
            ]
        events.append(
            ("response.output_item.done", {"type": "response.output_item.done", "output_index": index, "item": item})
        )
    events.append(("response.completed", {"type": "response.completed", "response": response}))
    for number, (_, data) in enumerate(events):
        data["sequence_number"] = number
    return 200, "text/event-stream; charset=utf-8", _sse(events)


def _openai_has_tool_output(items: Any) -> bool:
    """Whether a tool's output follows the latest user message (so the agent has done its step this turn)."""
    if not isinstance(items, list):
        return False
    for item in reversed(items):
        if not isinstance(item, dict):
            continue
        if item.get("type") in ("function_call_output", "custom_tool_call_output"):
            return True
        if item.get("type", "message") == "message" and item.get("role") == "user":
            return False
    return False


def _openai_tool_name(tool: dict[str, Any]) -> str:
    return str(tool.get("name") or (tool.get("function") or {}).get("name") or tool.get("type") or "")


# -- encoding ------------------------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _error_json(message: str, api: Api = "anthropic") -> bytes:
    if api == "openai":
        return _json({"error": {"type": "invalid_request_error", "message": message, "code": None, "param": None}})
    return _json({"type": "error", "error": {"type": "invalid_request_error", "message": message}})


def _sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def iter_json_lines(output: bytes | str) -> Iterator[Any]:
    """The JSON objects in a CLI's line-delimited output (`stream-json`, `--json`), skipping other lines."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


# -- a stdio MCP server to hand to the agents ----------------------------------------------------------------

# Source of a minimal MCP server (stdio, newline-delimited JSON-RPC; Python 3 stdlib only) for tests that check
# an agent's MCP configuration: copy it into the sandbox and name it in the agent's MCP config, e.g.
# `{"mcpServers": {"fake": {"command": "python3", "args": ["/tmp/fake_mcp.py", MARKER_FILE]}}}`. It offers
# one tool, `fake_echo`, and appends every JSON-RPC method it receives to MARKER_FILE (when given).
MCP_SERVER_SOURCE = r"""
import json, sys

marker = sys.argv[1] if len(sys.argv) > 1 else None
TOOL = {
    "name": "fake_echo",
    "description": "Echoes its text argument back.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


def reply(message_id, result=None, error=None):
    out = {"jsonrpc": "2.0", "id": message_id}
    if error is None:
        out["result"] = result
    else:
        out["error"] = error
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    message = json.loads(line)
    method = message.get("method")
    if marker and method:
        with open(marker, "a") as f:
            f.write(method + "\n")
    if "id" not in message or method is None:
        continue  # a notification, or a response to us
    params = message.get("params") or {}
    if method == "initialize":
        reply(message["id"], {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "fake-mcp", "version": "1.0.0"},
        })
    elif method == "tools/list":
        reply(message["id"], {"tools": [TOOL]})
    elif method == "tools/call":
        text = (params.get("arguments") or {}).get("text", "")
        reply(message["id"], {"content": [{"type": "text", "text": text}], "isError": False})
    elif method == "ping":
        reply(message["id"], {})
    elif method in ("resources/list", "resources/templates/list", "prompts/list"):
        key = {"resources/list": "resources", "resources/templates/list": "resourceTemplates"}.get(method, "prompts")
        reply(message["id"], {key: []})
    else:
        reply(message["id"], error={"code": -32601, "message": "method not found: " + method})
"""
