"""The real Claude Code and Codex CLIs, in a sandbox container, driven offline by the scripted fake model.

Each agent test starts a container from the agent image (scripts/build-agent-image.sh) with host networking,
starts a `FakeModel` on 127.0.0.1, and runs the CLI inside the container as the `agent` user in a
git-initialised /workspace, with the instruction as an argv element and stdin closed. The model's script makes
the CLI write a file, then end with a final text; the tests check the file, the CLI's JSON output, and what
reached the model (API key, instruction, tools offered, MCP servers, resumed history).
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from tests.conftest import OWNER_LABEL
from tests.fake_model import MCP_SERVER_SOURCE, FakeModel, Script, iter_json_lines

REPO = Path(__file__).resolve().parent.parent
AGENT_UID = 1000
WORKSPACE = "/workspace"
AGENT_TIMEOUT_SECONDS = 180
# An instruction with quotes, shell metacharacters, a newline and non-ASCII text: it must reach the model
# byte for byte, which it only does if it travels as an argv element and nothing re-quotes it.
INSTRUCTION = "Create the file, please: \"quotes\", 'single', $(not a command) `nor this` ; && |\nsecond line: café ✓"
CODEX_KEY_VAR = "FAKE_MODEL_API_KEY"
MCP_SCRIPT = "/home/agent/fake_mcp.py"
MCP_MARKER = "/home/agent/mcp-calls.log"


# -- fixtures and helpers ------------------------------------------------------------------------------------


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        return list(iter_json_lines(self.stdout))

    def describe(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class Sandbox:
    def __init__(self, container: Container) -> None:
        self.container = container

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: int = AGENT_TIMEOUT_SECONDS) -> Result:
        """Runs argv as `agent` in /workspace, stdin closed (not attached), bounded by coreutils `timeout`."""
        result = self.container.exec_run(
            ["timeout", "--kill-after=5", str(timeout), *argv],
            user="agent",
            workdir=WORKSPACE,
            environment=env or {},
            stdin=False,
            demux=True,
        )
        stdout, stderr = cast(tuple[bytes | None, bytes | None], result.output)
        exit_code = -1 if result.exit_code is None else result.exit_code
        return Result(exit_code, (stdout or b"").decode(errors="replace"), (stderr or b"").decode(errors="replace"))

    def put_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Writes a file owned by `agent` (its parent directory must exist)."""
        data = content.encode() if isinstance(content, str) else content
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(path.rsplit("/", 1)[1])
            info.size, info.mode, info.uid, info.gid = len(data), mode, AGENT_UID, AGENT_UID
            info.uname = info.gname = "agent"
            tar.addfile(info, io.BytesIO(data))
        assert self.container.put_archive(path.rsplit("/", 1)[0] or "/", buffer.getvalue())

    def read_file(self, path: str) -> bytes | None:
        result = self.container.exec_run(["cat", "--", path], user="agent", demux=True)
        stdout, _ = cast(tuple[bytes | None, bytes | None], result.output)
        return (stdout or b"") if result.exit_code == 0 else None


@pytest.fixture
def sandbox(docker_client: docker.DockerClient, owner: str, agent_image: str) -> Iterator[Sandbox]:
    container = docker_client.containers.run(
        agent_image,
        detach=True,
        network_mode="host",  # the fake model listens on the host's loopback
        labels={OWNER_LABEL: owner},
        name=f"fake-model-{uuid.uuid4().hex[:10]}",
    )
    try:
        box = Sandbox(container)
        setup = box.run(
            ["sh", "-c", "git init -q . && git config user.email agent@example.invalid && git config user.name agent"]
        )
        assert setup.exit_code == 0, setup.describe()
        yield box
    finally:
        container.remove(force=True)


def claude_argv(instruction: str, *extra: str) -> list[str]:
    return [
        "claude",
        "-p",
        instruction,
        "--dangerously-skip-permissions",
        "--output-format",
        "stream-json",
        "--verbose",
        *extra,
    ]


def claude_env(model: FakeModel, api_key: str) -> dict[str, str]:
    return {
        "ANTHROPIC_BASE_URL": model.url,
        "ANTHROPIC_API_KEY": api_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def codex_config(model: FakeModel, mcp: bool = False) -> str:
    config = f"""model = "fake-model"
model_provider = "fake"

[model_providers.fake]
name = "fake"
base_url = "{model.url}/v1"
env_key = "{CODEX_KEY_VAR}"
wire_api = "responses"
"""
    if mcp:
        config += f"""
[mcp_servers.fake]
command = "python3"
args = ["{MCP_SCRIPT}", "{MCP_MARKER}"]
"""
    return config


def setup_codex(sandbox: Sandbox, model: FakeModel, mcp: bool = False) -> str:
    codex_home = "/home/agent/.codex"
    assert sandbox.run(["mkdir", "-p", codex_home]).exit_code == 0
    sandbox.put_file(f"{codex_home}/config.toml", codex_config(model, mcp))
    return codex_home


def codex_env(codex_home: str, api_key: str) -> dict[str, str]:
    return {"CODEX_HOME": codex_home, CODEX_KEY_VAR: api_key}


CODEX_FLAGS = ["--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check", "--json"]


def claude_result(result: Result) -> dict[str, Any]:
    finals = [event for event in result.events() if event.get("type") == "result"]
    assert finals, result.describe()
    return finals[-1]


def codex_messages(result: Result) -> list[str]:
    return [
        event["item"]["text"]
        for event in result.events()
        if event.get("type") == "item.completed" and event["item"].get("type") == "agent_message"
    ]


# -- the fake model on its own -------------------------------------------------------------------------------


def request(
    model: FakeModel, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", model.port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def sse_events(payload: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in payload.decode().split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_anthropic_turns_and_recording() -> None:
    script = Script(file_path="notes/a.txt", content="x\n", final_text="finished")
    with FakeModel(script) as model:
        tools = [{"name": "Write", "input_schema": {}}, {"name": "Bash", "input_schema": {}}]
        first: dict[str, Any] = {
            "model": "m",
            "stream": True,
            "tools": tools,
            "system": "Primary working directory: /repo",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "do it"}]}],
        }
        status, content_type, payload = request(model, "POST", "/v1/messages?beta=true", first, {"x-api-key": "k1"})
        assert status == 200 and content_type.startswith("text/event-stream")
        events = sse_events(payload)
        assert [name for name, _ in events] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        block = events[1][1]["content_block"]
        assert block["type"] == "tool_use" and block["name"] == "Write"
        arguments = json.loads(events[2][1]["delta"]["partial_json"])
        assert arguments == {"file_path": "/repo/notes/a.txt", "content": "x\n"}
        assert events[4][1]["delta"]["stop_reason"] == "tool_use"

        second = {
            **first,
            "stream": False,
            "messages": [
                *first["messages"],
                {"role": "assistant", "content": [{**block, "input": arguments}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": "ok"}]},
            ],
        }
        status, _, payload = request(model, "POST", "/v1/messages", second)
        message = json.loads(payload)
        assert status == 200 and message["content"] == [{"type": "text", "text": "finished"}]
        assert message["stop_reason"] == "end_turn"

        recorded = model.model_requests("anthropic")
        assert len(recorded) == 2
        assert recorded[0].query == {"beta": ["true"]} and recorded[0].headers["x-api-key"] == "k1"
        assert recorded[0].texts() == ["do it"] and recorded[0].tool_names() == ["Write", "Bash"]
        assert model.unknown_paths == []


def test_openai_turns_and_unknown_paths(tmp_path: Path) -> None:
    script = Script(file_path="b.txt", content="it's\n", final_text="all done")
    with FakeModel(script) as model:
        first: dict[str, Any] = {
            "model": "m",
            "stream": True,
            "tools": [{"type": "function", "name": "exec_command", "parameters": {}}],
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}],
        }
        status, _, payload = request(model, "POST", "/v1/responses", first, {"authorization": "Bearer k2"})
        events = sse_events(payload)
        names = [name for name, _ in events]
        assert status == 200 and names[0] == "response.created" and names[-1] == "response.completed"
        assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
        call = next(data["item"] for name, data in events if name == "response.output_item.done")
        assert call["type"] == "function_call" and call["name"] == "exec_command"
        command = json.loads(call["arguments"])["cmd"]
        subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True)
        assert (tmp_path / "b.txt").read_bytes() == b"it's\n"

        second = {
            **first,
            "input": [
                *first["input"],
                call,
                {"type": "function_call_output", "call_id": call["call_id"], "output": "done"},
            ],
        }
        _, _, payload = request(model, "POST", "/v1/responses", second)
        done = sse_events(payload)[-1][1]["response"]
        assert done["output"][0]["content"][0]["text"] == "all done"

        status, _, _ = request(model, "POST", "/v1/nothing-here", {})
        assert status == 404
        status, _, payload = request(model, "GET", "/v1/models")
        assert status == 200 and json.loads(payload)["data"][0]["id"]
        assert model.unknown_paths == ["POST /v1/nothing-here"]
        assert model.model_requests("openai")[0].headers["authorization"] == "Bearer k2"
        assert model.model_requests("openai")[0].texts() == ["go"]


# -- Claude Code ---------------------------------------------------------------------------------------------


def test_claude_code_writes_the_file_and_finishes(sandbox: Sandbox) -> None:
    script = Script(file_path="hello.txt", content="Hello from Claude\nline 2 ✓\n", final_text="CLAUDE-DONE-42")
    with FakeModel(script) as model:
        result = sandbox.run(claude_argv(INSTRUCTION), claude_env(model, "sk-ant-fake-claude"))
        assert result.exit_code == 0, result.describe()
        assert sandbox.read_file(f"{WORKSPACE}/hello.txt") == script.content.encode()
        final = claude_result(result)
        assert final["subtype"] == "success" and final["result"] == "CLAUDE-DONE-42", result.describe()
        print(result.stdout)

        agent_turns = model.agent_requests("anthropic")
        assert len(agent_turns) >= 2
        for request in agent_turns:
            assert request.headers["x-api-key"] == "sk-ant-fake-claude"
            assert request.query == {"beta": ["true"]}
            assert request.json["stream"] is True
        assert "Write" in agent_turns[0].tool_names()
        assert INSTRUCTION in agent_turns[0].texts()
        assert model.unknown_paths == []


# -- Codex ---------------------------------------------------------------------------------------------------


def test_codex_writes_the_file_and_finishes(sandbox: Sandbox) -> None:
    script = Script(file_path="hello.txt", content="Hello from Codex\nit's here ✓\n", final_text="CODEX-DONE-42")
    with FakeModel(script) as model:
        codex_home = setup_codex(sandbox, model)
        result = sandbox.run(["codex", "exec", *CODEX_FLAGS, INSTRUCTION], codex_env(codex_home, "sk-fake-codex"))
        assert result.exit_code == 0, result.describe()
        print(result.stdout)
        assert sandbox.read_file(f"{WORKSPACE}/hello.txt") == script.content.encode()
        assert codex_messages(result) == ["CODEX-DONE-42"], result.describe()
        assert result.events()[-1]["type"] == "turn.completed"

        agent_turns = model.agent_requests("openai")
        assert len(agent_turns) == 2
        for request in agent_turns:
            assert request.headers["authorization"] == "Bearer sk-fake-codex"
            assert request.json["stream"] is True
        assert "exec_command" in agent_turns[0].tool_names()
        assert INSTRUCTION in agent_turns[0].texts()
        assert model.unknown_paths == []


# -- MCP configuration ---------------------------------------------------------------------------------------


def test_claude_code_mcp_config_reaches_the_model(sandbox: Sandbox) -> None:
    sandbox.put_file(MCP_SCRIPT, MCP_SERVER_SOURCE)
    config = {"mcpServers": {"fake": {"command": "python3", "args": [MCP_SCRIPT, MCP_MARKER]}}}
    sandbox.put_file("/home/agent/mcp.json", json.dumps(config))
    with FakeModel(Script(final_text="MCP-OK")) as model:
        argv = claude_argv(INSTRUCTION, "--mcp-config", "/home/agent/mcp.json")
        result = sandbox.run(argv, claude_env(model, "sk-ant-fake"))
        assert result.exit_code == 0, result.describe()
        print(result.stdout)
        init = next(event for event in result.events() if event.get("subtype") == "init")
        assert {"name": "fake", "status": "connected"} in init["mcp_servers"], init
        names = [name for request in model.agent_requests("anthropic") for name in request.tool_names()]
        assert "mcp__fake__fake_echo" in names, sorted(set(names))
        assert b"tools/list" in (sandbox.read_file(MCP_MARKER) or b"")


def test_codex_mcp_config_reaches_the_model(sandbox: Sandbox) -> None:
    sandbox.put_file(MCP_SCRIPT, MCP_SERVER_SOURCE)
    with FakeModel(Script(final_text="MCP-OK")) as model:
        codex_home = setup_codex(sandbox, model, mcp=True)
        result = sandbox.run(["codex", "exec", *CODEX_FLAGS, INSTRUCTION], codex_env(codex_home, "sk-fake"))
        assert result.exit_code == 0, result.describe()
        print(result.stdout)
        names = [name for request in model.agent_requests("openai") for name in request.tool_names()]
        print(sorted(set(names)))
        assert any("fake_echo" in name for name in names), sorted(set(names))
        assert b"tools/list" in (sandbox.read_file(MCP_MARKER) or b"")


# -- resuming a session --------------------------------------------------------------------------------------


def test_claude_code_resumes_a_session(sandbox: Sandbox) -> None:
    session_id = str(uuid.uuid4())  # Claude Code takes the session id from the caller when asked to
    with FakeModel(Script(file_path="one.txt", content="1\n", final_text="FIRST")) as model:
        env = claude_env(model, "sk-ant-fake")
        first = sandbox.run(claude_argv("first instruction", "--session-id", session_id), env)
        assert first.exit_code == 0, first.describe()
        assert claude_result(first)["session_id"] == session_id
        assert all(event["session_id"] == session_id for event in first.events()), first.describe()

        model.script = Script(file_path="two.txt", content="2\n", final_text="SECOND")
        model.clear()
        second = sandbox.run(claude_argv("second instruction", "--resume", session_id), env)
        assert second.exit_code == 0, second.describe()
        print(second.stdout)
        assert claude_result(second)["result"] == "SECOND"
        assert claude_result(second)["session_id"] == session_id
        assert sandbox.read_file(f"{WORKSPACE}/two.txt") == b"2\n"
        texts = model.agent_requests("anthropic")[0].texts()
        assert "first instruction" in texts and "second instruction" in texts, texts


def test_codex_resumes_a_session(sandbox: Sandbox) -> None:
    with FakeModel(Script(file_path="one.txt", content="1\n", final_text="FIRST")) as model:
        codex_home = setup_codex(sandbox, model)
        env = codex_env(codex_home, "sk-fake")
        first = sandbox.run(["codex", "exec", *CODEX_FLAGS, "first instruction"], env)
        assert first.exit_code == 0, first.describe()
        thread_id = next(e["thread_id"] for e in first.events() if e.get("type") == "thread.started")

        model.script = Script(file_path="two.txt", content="2\n", final_text="SECOND")
        model.clear()
        second = sandbox.run(["codex", "exec", "resume", *CODEX_FLAGS, thread_id, "second instruction"], env)
        assert second.exit_code == 0, second.describe()
        print(second.stdout)
        assert codex_messages(second) == ["SECOND"]
        assert next(e["thread_id"] for e in second.events() if e.get("type") == "thread.started") == thread_id
        assert sandbox.read_file(f"{WORKSPACE}/two.txt") == b"2\n"
        texts = model.agent_requests("openai")[0].texts()
        assert "first instruction" in texts and "second instruction" in texts, texts


# -- model errors ----------------------------------------------------------------------------------------------


def test_model_errors_fail_both_clis(sandbox: Sandbox) -> None:
    with FakeModel(Script(error_status=400)) as model:
        claude = sandbox.run(claude_argv(INSTRUCTION), claude_env(model, "sk-ant-fake"))
        assert claude.exit_code == 1, claude.describe()
        final = claude_result(claude)
        assert final["is_error"] is True and final["api_error_status"] == 400, final

        codex_home = setup_codex(sandbox, model)
        codex = sandbox.run(["codex", "exec", *CODEX_FLAGS, INSTRUCTION], codex_env(codex_home, "sk-fake"))
        assert codex.exit_code == 1, codex.describe()
        failed = [event for event in codex.events() if event.get("type") == "turn.failed"]
        assert failed and "scripted error 400" in failed[0]["error"]["message"], codex.describe()
