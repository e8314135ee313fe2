"""The REAL Claude Code and Codex CLIs, driven through the platform (orchestrator -> provider -> sandbox) against a
scripted local model endpoint: they edit the repository, the platform pushes the edit, and the model key, the
instruction and MCP configuration travel exactly as they should."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests import docker_only
from tests.client import Client, Collected
from tests.fake_model import MCP_SERVER_SOURCE, FakeModel, Script
from tests.git_server import GitServer
from tests.test_coding import collect_task, repo

# These tests run once, on Docker, not on every provider.
stack, client = docker_only.stack, docker_only.client

# Quotes, backticks, $(...), a newline and non-ASCII: it must reach the model byte for byte and run nothing.
INSTRUCTION = (
    "Write the file, please: \"quotes\", 'single', $(touch /tmp/pwned-dollar) `touch /tmp/pwned-tick` ; && |\n"
    "second line: café ✓"
)
MCP_MARKER = "/tmp/mcp-calls.log"
AGENTS = ["claude", "codex"]


@pytest.fixture
def model() -> Iterator[FakeModel]:
    with FakeModel(Script(file_path="hello.txt", content="hello from the agent\n", final_text="ALL DONE")) as m:
        yield m


def agent_request(agent: str, model: FakeModel, key: str, instruction: str = INSTRUCTION) -> pb.ExecuteAgentRequest:
    if agent == "claude":
        return pb.ExecuteAgentRequest(
            agent="claude",
            instruction=instruction,
            secrets={"ANTHROPIC_API_KEY": key},
            env={"ANTHROPIC_BASE_URL": model.url},
        )
    # Codex needs a model name it does not know to offer plain function tools (see tests/fake_model.py).
    return pb.ExecuteAgentRequest(
        agent="codex",
        instruction=instruction,
        model="fake-model",
        secrets={"OPENAI_API_KEY": key},
        env={"OPENAI_BASE_URL": f"{model.url}/v1"},
    )


def api(agent: str) -> str:
    return "anthropic" if agent == "claude" else "openai"


@pytest.mark.parametrize("agent", AGENTS)
async def test_real_agent_task_pushes_its_edit(
    agent: str,
    model: FakeModel,
    client: Client,
    git_server: GitServer,
    agent_image: str,
    stack: LocalStack,
    docker_client: docker.DockerClient,
) -> None:
    name = repo(git_server)
    key = f"sk-model-{uuid.uuid4().hex}"
    request = pb.RunTaskRequest(
        provider="docker",
        spec=pb.SandboxSpec(image=agent_image, network_mode="host"),
        repository=pb.RepositorySetup(url=git_server.url(name), token=git_server.token or "", branch=f"{agent}/edit"),
        agent=agent_request(agent, model, key),
        keep_sandbox=True,
    )
    tasks, outputs = await collect_task(client.stub.RunTask(request, metadata=client.metadata))
    final = tasks[-1]
    try:
        assert final.phase == pb.Task.PHASE_SUCCEEDED, (final.error, bytes(outputs[final.agent_execution].stderr))
        assert git_server.read_file(name, f"{agent}/edit", "hello.txt") == b"hello from the agent\n"
        assert final.push.files_changed == 1

        run = outputs[final.agent_execution]
        kinds = {event.kind for event in run.agent_events}
        assert {pb.AgentEvent.KIND_SESSION, pb.AgentEvent.KIND_TOOL_CALL, pb.AgentEvent.KIND_TEXT} <= kinds
        assert any(e.kind == pb.AgentEvent.KIND_TEXT and e.text == "ALL DONE" for e in run.agent_events)
        assert next(e.session_id for e in run.agent_events if e.kind == pb.AgentEvent.KIND_SESSION)

        calls = model.agent_requests(api(agent))
        assert calls, model.requests
        assert INSTRUCTION in calls[0].texts()  # byte for byte
        sent_key = calls[0].headers.get("x-api-key") or calls[0].headers.get("authorization", "")
        assert key in sent_key  # the secret reached the model, and only the model:

        pwned = await client.run(final.name, ["sh", "-c", "ls /tmp/pwned-dollar /tmp/pwned-tick 2>/dev/null | wc -l"])
        assert bytes(pwned.stdout).strip() == b"0"  # nothing in the instruction was executed
        config = await client.run(final.name, ["cat", "/workspace/.git/config"])
        container = docker_client.containers.get(final.name.rsplit("/", 1)[1])
        logs = "".join(p.read_text() for p in Path(stack.log_dir or ".").glob("*.log"))  # noqa: ASYNC240
        everything = [
            bytes(run.stdout),
            bytes(run.stderr),
            bytes(config.stdout),
            str(run.agent_events).encode(),
            str(container.labels).encode(),
            str(container.attrs["Config"]["Env"]).encode(),
            logs.encode(),
        ]
        for text in everything:
            assert key.encode() not in text
            assert (git_server.token or "").encode() not in text
    finally:
        await client.delete(final.name)


@pytest.mark.parametrize("agent", AGENTS)
async def test_mcp_config_reaches_the_agent_and_sessions_resume(
    agent: str, model: FakeModel, client: Client, git_server: GitServer, agent_image: str
) -> None:
    sandbox = await client.create(
        spec=pb.SandboxSpec(image=agent_image, network_mode="host"),
        repository=pb.RepositorySetup(url=git_server.url(repo(git_server)), token=git_server.token or ""),
    )
    try:
        setup = await client.attach(sandbox.workspace.setup_execution, Collected())
        assert setup.finished is not None and setup.finished.state == pb.Execution.STATE_SUCCEEDED
        first = agent_request(agent, model, "sk-first", "first instruction")
        first.sandbox = sandbox.name
        first.mcp_servers.append(
            pb.McpServer(name="fake", command="python3", args=["-c", MCP_SERVER_SOURCE, MCP_MARKER])
        )
        run = Collected()
        async for event in client.stub.ExecuteAgent(first, metadata=client.metadata):
            run.add(event)
        assert run.finished is not None and run.finished.state == pb.Execution.STATE_SUCCEEDED, bytes(run.stderr)
        tools = model.agent_requests(api(agent))[0].tool_names()
        assert any("mcp__fake" in tool for tool in tools), tools
        marker = await client.run(sandbox.name, ["cat", MCP_MARKER])
        assert b"tools/list" in bytes(marker.stdout)

        session = next(e.session_id for e in run.agent_events if e.kind == pb.AgentEvent.KIND_SESSION)
        model.clear()
        model.script = Script(file_path="two.txt", content="2\n", final_text="SECOND")
        second = agent_request(agent, model, "sk-first", "second instruction")
        again = await client.run_agent(
            sandbox.name,
            agent,
            "second instruction",
            model=second.model,
            secrets=dict(second.secrets),
            env=dict(second.env),
            resume_session=session,
        )
        assert again.finished is not None and again.finished.state == pb.Execution.STATE_SUCCEEDED
        texts = model.agent_requests(api(agent))[0].texts()
        assert "first instruction" in texts and "second instruction" in texts, texts
    finally:
        await client.delete(sandbox.name)
