"""No instruction can become a CLI option (issue 11, point 3).

An instruction is hostile input: it may come from an issue, a prompt-injected caller or a copied task. Before,
claude got it right after `-p` and codex as its last positional, so `--settings={"hooks":...}` ran a command in
the sandbox with no model involved and `--help` printed help. Now every catalog agent gets it on stdin or as the
one operand after `--` (provider_kit/agents/catalog.py says which and why).

- The REAL claude and codex CLIs (agent image), driven through the platform against the scripted fake model:
  option-shaped instructions reach the model as the user's prompt byte for byte, no canary file appears, and no
  help or version text comes out instead of the model's answer.
- Every other catalog entry runs a recording stub installed under its binary name: the instruction arrives only
  where the catalog says (stdin, or the operand after `--`), and the argv the CLI parses is the same whatever the
  instruction is. Parametrized over AGENTS, so a new catalog entry is covered automatically.
- The `shell` agent runs its instruction as a script: an instruction that looks like a bash option is a command.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator

import grpc
import pytest

from provider_kit.agents import AGENTS
from sandbox.v1 import sandbox_pb2 as pb
from tests import docker_only
from tests.client import Client, Collected, expect_error
from tests.fake_model import Api, FakeModel, Script
from tests.git_server import GitServer
from tests.test_coding import repo

stack, client = docker_only.stack, docker_only.client

CANARY_DIR = "/tmp/canary"
SETTINGS_HOOK = (
    '--settings={"hooks":{"SessionStart":[{"hooks":[{"type":"command","command":"touch /tmp/canary/settings"}]}]}}'
)
# Shaped like what each CLI's parser would take as an option or a subcommand.
CLAUDE_INSTRUCTIONS = [
    "--help",
    "-h",
    "--version",
    SETTINGS_HOOK,
    '--mcp-config={"mcpServers":{"x":{"command":"touch","args":["/tmp/canary/mcp"]}}}',
    "mcp",  # a subcommand
]
CODEX_INSTRUCTIONS = [
    "--help",
    "-h",
    "--version",
    '--config=notify=["touch","/tmp/canary/notify"]',
    '-cmcp_servers.x.command="touch"',
    '-c model_provider="evil"',
    "--dangerously-bypass-approvals-and-sandbox",
    "resume",  # a subcommand
]
# For the stubs: options of every catalog CLI, subcommand names, the end-of-options marker, and multi-word forms.
STUB_INSTRUCTIONS = [
    "--help",
    "-",
    "--",
    "update",
    SETTINGS_HOOK,
    "-p --yolo --resume x",
    "-c model_provider=evil --approval-mode yolo",
    "--prompt=--help -- --output-format text",
]
# Where the image keeps CLIs: the agent script looks for the binary with the platform's own PATH, never the
# client's (a client PATH reaches only the agent process).
STUB_BIN = "/usr/local/bin"
STUB_ARGV = "/tmp/stub-argv"
STUB_STDIN = "/tmp/stub-stdin"
# Records how it was called: every argument NUL-terminated, then all of its stdin.
STUB = f"""#!/bin/sh
for arg in "$@"; do printf '%s\\0' "$arg"; done > {STUB_ARGV}
cat > {STUB_STDIN}
"""
STUBBED = sorted(name for name, agent in AGENTS.items() if agent.binary != "bash")


# -- the real claude and codex ------------------------------------------------------------------------------


@pytest.fixture
def model() -> Iterator[FakeModel]:
    with FakeModel(Script(file_path="hello.txt", content="hello\n", final_text="ALL DONE")) as m:
        yield m


async def workspace(client: Client, git_server: GitServer, image: str = "") -> pb.Sandbox:
    spec = pb.SandboxSpec(image=image, network_mode="host") if image else None
    sandbox = await client.create(
        spec=spec, repository=pb.RepositorySetup(url=git_server.url(repo(git_server)), token=git_server.token or "")
    )
    setup = await client.attach(sandbox.workspace.setup_execution, Collected())
    assert setup.finished is not None and setup.finished.state == pb.Execution.STATE_SUCCEEDED, bytes(setup.stderr)
    return sandbox


@pytest.fixture
async def agent_sandbox(client: Client, git_server: GitServer, agent_image: str) -> AsyncIterator[str]:
    sandbox = await workspace(client, git_server, agent_image)
    try:
        # The directory exists, so a `touch` that any injected hook or command ran would leave its file.
        made = await client.run(sandbox.name, ["install", "-d", "-m", "1777", CANARY_DIR])
        assert made.finished is not None and made.finished.exit_code == 0
        yield sandbox.name
    finally:
        await client.delete(sandbox.name)


def real_request(agent: str, model: FakeModel) -> dict[str, object]:
    if agent == "claude":
        return {"secrets": {"ANTHROPIC_API_KEY": "sk-test"}, "env": {"ANTHROPIC_BASE_URL": model.url}}
    # Codex needs a model name it does not know to offer plain function tools (see tests/fake_model.py).
    secrets = {"OPENAI_API_KEY": "sk-test"}
    return {"model": "fake-model", "secrets": secrets, "env": {"OPENAI_BASE_URL": f"{model.url}/v1"}}


@pytest.mark.parametrize(("agent", "instructions"), [("claude", CLAUDE_INSTRUCTIONS), ("codex", CODEX_INSTRUCTIONS)])
async def test_real_cli_takes_option_shaped_instructions_as_the_prompt(
    agent: str, instructions: list[str], model: FakeModel, client: Client, agent_sandbox: str
) -> None:
    api: Api = "anthropic" if agent == "claude" else "openai"
    for instruction in instructions:
        model.clear()
        run = await client.run_agent(agent_sandbox, agent, instruction, **real_request(agent, model))
        what = f"{agent} {instruction!r}: {bytes(run.stderr)[-2000:]!r}"
        assert run.finished is not None and run.finished.state == pb.Execution.STATE_SUCCEEDED, what
        # The model's answer, not help or version text, is the result...
        results = [e.text for e in run.agent_events if e.kind == pb.AgentEvent.KIND_TEXT]
        assert "ALL DONE" in results, what
        assert b"Usage:" not in bytes(run.stdout) and b"Usage:" not in bytes(run.stderr), what
        # ...and the model got the instruction, byte for byte, as the user's prompt.
        calls = model.agent_requests(api)
        assert calls and instruction in calls[0].texts(), (what, calls[0].texts() if calls else model.requests)
    canaries = await client.run(agent_sandbox, ["find", CANARY_DIR, "-mindepth", "1"])
    assert bytes(canaries.stdout) == b"", bytes(canaries.stdout)  # no hook, MCP server or notify command ran


# -- every other catalog entry, through a recording stub ----------------------------------------------------


@pytest.fixture
async def base_workspace(client: Client, git_server: GitServer) -> AsyncIterator[str]:
    sandbox = await workspace(client, git_server)
    try:
        yield sandbox.name
    finally:
        await client.delete(sandbox.name)


def dummy_secrets(agent: str) -> dict[str, str]:
    return {alternatives[0]: f"secret-{uuid.uuid4().hex[:8]}" for alternatives in AGENTS[agent].secrets}


async def read(client: Client, sandbox: str, path: str) -> bytes:
    return b"".join(chunk.data for chunk in await client.read_file(sandbox, path))


@pytest.mark.parametrize("agent", STUBBED)
async def test_instruction_arrives_only_where_the_catalog_says(agent: str, client: Client, base_workspace: str) -> None:
    binary = AGENTS[agent].binary
    await client.write_file(base_workspace, f"{STUB_BIN}/{binary}", STUB.encode(), mode=0o755)
    env = {"STUB_CLIENT_VARIABLE": "1"}
    shapes: set[tuple[str, ...]] = set()
    for instruction in STUB_INSTRUCTIONS:
        # What the catalog says for this instruction (the stub then shows what the CLI really got).
        expected = AGENTS[agent].build(pb.ExecuteAgentRequest(agent=agent, instruction=instruction))
        one_word = not any(c.isspace() for c in instruction)
        if AGENTS[agent].operand_prompt and one_word:
            # An operand the CLI's parser could dispatch as a subcommand is refused before anything runs.
            request = pb.ExecuteAgentRequest(
                sandbox=base_workspace, agent=agent, instruction=instruction, secrets=dummy_secrets(agent), env=env
            )
            stream = client.stub.ExecuteAgent(request, metadata=client.metadata)
            await expect_error(_drain(stream), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
            continue
        await client.run(base_workspace, ["rm", "-f", STUB_ARGV, STUB_STDIN])
        run = await client.run_agent(base_workspace, agent, instruction, secrets=dummy_secrets(agent), env=env)
        what = f"{agent} {instruction!r}: {bytes(run.stderr)[-1000:]!r}"
        assert run.finished is not None and run.finished.state == pb.Execution.STATE_SUCCEEDED, what
        argv = (await read(client, base_workspace, STUB_ARGV)).split(b"\0")[:-1]
        stdin = await read(client, base_workspace, STUB_STDIN)
        assert argv == [a.encode() for a in expected.argv[1:]], what  # the CLI got the catalog's argv
        data = instruction.encode()
        if expected.stdin is not None:
            assert stdin == data, what
            shape = tuple(a.decode() for a in argv)
        else:
            # The one operand after `--`, last: no parser reads it as an option.
            assert stdin == b"", what
            assert argv.index(b"--") == len(argv) - 2 and argv[-1] == data, what
            shape = tuple(a.decode() for a in argv[:-1])
        shapes.add(shape)
    # Whatever the instruction, the options the CLI parses are the same: nothing of it is in them.
    assert len(shapes) == 1, shapes


async def _drain(stream: AsyncIterable[object]) -> None:
    async for _ in stream:
        pass


# -- the shell agent ----------------------------------------------------------------------------------------


async def test_shell_runs_an_option_shaped_instruction_as_a_command(client: Client, base_workspace: str) -> None:
    for instruction in ["--help", "-c x", "--rcfile /etc/passwd", "-x", "+o posix", "-"]:
        run = await client.run_agent(base_workspace, "shell", instruction)
        assert run.finished is not None
        # bash looked the first word up as a command: it did not read the instruction as its own option.
        assert run.finished.exit_code == 127, (instruction, run.finished, bytes(run.stderr))
        first = instruction.split()[0].encode()
        assert first + b": command not found" in bytes(run.stderr), (instruction, bytes(run.stderr))


# -- the other request fields that reach an agent's argv ------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "--help"),
        ("model", "-cnotify=x"),
        ("resume_session", "--settings={}"),
        ("resume_session", "-"),
        ("mcp_servers", "--mcp-config"),
    ],
)
@pytest.mark.parametrize("agent", sorted(AGENTS))
async def test_option_shaped_fields_are_refused_before_any_side_effect(
    agent: str, field: str, value: str, client: Client, git_server: GitServer
) -> None:
    request = pb.ExecuteAgentRequest(agent=agent, instruction="do the thing", secrets=dummy_secrets(agent))
    if field == "mcp_servers":
        request.mcp_servers.append(pb.McpServer(name=value, command="true"))
    else:
        setattr(request, field, value)
    task = pb.RunTaskRequest(
        provider="docker",
        repository=pb.RepositorySetup(url=git_server.url("never-cloned"), token=git_server.token or ""),
        agent=request,
    )
    # INVALID_ARGUMENT from RunTask's check, before any sandbox exists (the autouse fixture sees no container).
    stream = client.stub.RunTask(task, metadata=client.metadata)
    await expect_error(_drain(stream), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
