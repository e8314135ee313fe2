"""One entry per agent: install, argv, required secrets, MCP configuration, output format, resume.

No instruction can be read as an option, a subcommand or a shell word: every CLI that reads its prompt on
standard input gets it there (the argv is then the same for every instruction), and the others get it as the
one operand after `--`. The instruction is never spliced into a shell string. It reaches the sandbox in the
execution's environment (SANDBOX_AGENT_STDIN), like the config files (which may hold MCP servers' secrets and
are written by the agent script as the agent user with mode 600); the script unsets both before the agent
starts.

How each CLI takes its prompt (checked against the real claude and codex in the agent image, and against the
documentation or source of the others):
- claude: `claude -p` (a flag) with no prompt operand reads it from stdin. (`-p ... -- INSTRUCTION` also
  works with 2.1.197; stdin keeps the instruction out of the parser whatever a later version does.)
- codex: `codex exec ... -` (and `codex exec resume ... SESSION -`) read it from stdin.
- gemini: reads stdin when it is not a terminal and runs headless (the model gets it followed by a blank
  line); no `-p` (yargs takes a following `-...` element as an option and leaves the prompt empty).
- copilot: documented "pipe a prompt to copilot"; piped input is ignored when `-p` is also given, so no `-p`.
- opencode: `opencode run` reads stdin when it is not a terminal (its operands would be re-quoted and joined).
- cursor: documents no stdin or file prompt (reports disagree on whether `-p` reads a pipe), so the one
  operand after `--`. Its commander-style parser still dispatches an operand after `--` that is exactly a
  subcommand name (`update`, `logout`...), so a one-word instruction is refused.
- shell: `bash -c -- INSTRUCTION`: bash runs the instruction as a script, and `--` ends bash's own options, so
  `--help` or `-c x` is a command, not an option.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from provider_kit.agents.parsers import PARSERS, Parser
from provider_kit.errors import failed_precondition, invalid_argument
from provider_kit.exec_scripts import with_user_env
from provider_kit.workspace import script
from sandbox.v1 import sandbox_pb2

EXECUTION_PREFIX = "agent-"


@dataclass(frozen=True)
class Invocation:
    """How to run one agent request."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Files to write before the run, keyed by path ("~/" is the agent user's home).
    files: dict[str, str] = field(default_factory=dict)
    # What the agent reads on its standard input (then end of file); None leaves stdin closed.
    stdin: str | None = None


Builder = Callable[[sandbox_pb2.ExecuteAgentRequest], Invocation]


@dataclass(frozen=True)
class Agent:
    name: str
    binary: str
    # npm package spec to install when the binary is missing; empty if it cannot be installed from npm.
    package: str
    # Each entry lists alternatives: one of them must be among the request's secrets.
    secrets: tuple[tuple[str, ...], ...]
    output: str
    build: Builder
    # The instruction is the operand after `--` (the CLI reads no prompt from stdin): a one-word instruction
    # could name one of the CLI's subcommands, so it is refused.
    operand_prompt: bool = False

    @property
    def parser(self) -> Parser | None:
        return PARSERS.get(self.output)

    def check_instruction(self, instruction: str) -> None:
        if self.operand_prompt and not any(c.isspace() for c in instruction.strip()):
            raise invalid_argument(
                "INVALID_FIELD",
                f"instruction for {self.name} must be more than one word: {self.binary} takes it as an operand, "
                "and a single word could name one of its subcommands",
                field="instruction",
            )

    def check_secrets(self, request: sandbox_pb2.ExecuteAgentRequest) -> None:
        for alternatives in self.secrets:
            if not any(request.secrets.get(name) for name in alternatives):
                names = " or ".join(alternatives)
                raise failed_precondition(
                    "MISSING_SECRET", f"agent {self.name} needs the secret {names}", secret=alternatives[0]
                )


def _stdio_or_url(server: sandbox_pb2.McpServer) -> dict[str, object]:
    if server.url:
        return {"type": "http", "url": server.url}
    return {"command": server.command, "args": list(server.args), "env": dict(server.env)}


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _claude(request: sandbox_pb2.ExecuteAgentRequest) -> Invocation:
    argv = [
        "claude",
        "-p",  # a flag: the prompt comes on stdin
        "--dangerously-skip-permissions",
        "--output-format",
        "stream-json",
        "--verbose",
    ]
    files = {}
    if request.model:
        argv += ["--model", request.model]
    if request.resume_session:
        argv += ["--resume", request.resume_session]
    if request.mcp_servers:
        path = "/tmp/.sandbox-agent/claude-mcp.json"  # an argv element: no "~" expansion here
        files[path] = json.dumps({"mcpServers": {s.name: _stdio_or_url(s) for s in request.mcp_servers}})
        argv += ["--mcp-config", path]
    # Claude refuses to skip permissions as root unless told it is in a sandbox; agents normally run as
    # the non-root `agent` user anyway.
    env = {
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "IS_SANDBOX": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    return Invocation(argv, env, files, stdin=request.instruction)


def _codex(request: sandbox_pb2.ExecuteAgentRequest) -> Invocation:
    options = ["--json", "--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check"]
    if request.model:
        options += ["-m", request.model]
    # "-" reads the prompt from stdin; `--` keeps the session id an operand whatever it is.
    if request.resume_session:
        argv = ["codex", "exec", "resume", *options, "--", request.resume_session, "-"]
    else:
        argv = ["codex", "exec", *options, "-"]
    config = ["check_for_update_on_startup = false"]
    base_url = request.env.get("OPENAI_BASE_URL")
    if base_url:
        # A custom endpoint (a gateway, or a local model server) needs its own provider entry.
        config += [
            'model_provider = "sandbox"',
            "",
            "[model_providers.sandbox]",
            'name = "sandbox"',
            f"base_url = {_toml_string(base_url)}",
            'env_key = "OPENAI_API_KEY"',
            'wire_api = "responses"',
        ]
    for server in request.mcp_servers:
        config += ["", f"[mcp_servers.{_toml_string(server.name)}]"]
        if server.url:
            config.append(f"url = {_toml_string(server.url)}")
        else:
            config.append(f"command = {_toml_string(server.command)}")
            config.append(f"args = [{', '.join(_toml_string(a) for a in server.args)}]")
            if server.env:
                pairs = ", ".join(f"{_toml_string(k)} = {_toml_string(v)}" for k, v in server.env.items())
                config.append(f"env = {{ {pairs} }}")
    return Invocation(argv, {}, {"~/.codex/config.toml": "\n".join(config) + "\n"}, stdin=request.instruction)


def _gemini(request: sandbox_pb2.ExecuteAgentRequest) -> Invocation:
    argv = ["gemini", "--approval-mode", "yolo", "--skip-trust", "-o", "stream-json"]
    if request.model:
        argv += ["-m", request.model]
    if request.resume_session:
        argv += ["-r", request.resume_session]
    servers = {
        s.name: ({"httpUrl": s.url} if s.url else {"command": s.command, "args": list(s.args), "env": dict(s.env)})
        for s in request.mcp_servers
    }
    settings = {
        "mcpServers": servers,
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    }
    return Invocation(
        argv,
        {"GEMINI_CLI_TRUST_WORKSPACE": "true"},
        {"~/.gemini/settings.json": json.dumps(settings)},
        stdin=request.instruction,
    )


def _cursor(request: sandbox_pb2.ExecuteAgentRequest) -> Invocation:
    # --trust matters: without it an untrusted workspace makes the CLI print a notice and exit 0.
    argv = ["cursor-agent", "-p", "--output-format", "stream-json", "--force", "--trust", "--approve-mcps"]
    if request.model:
        argv += ["--model", request.model]
    if request.resume_session:
        argv += ["--resume", request.resume_session]
    argv += ["--", request.instruction]
    files = {}
    if request.mcp_servers:
        servers = {s.name: ({"url": s.url} if s.url else _stdio_or_url(s)) for s in request.mcp_servers}
        files["~/.cursor/mcp.json"] = json.dumps({"mcpServers": servers})
    return Invocation(argv, {}, files)


def _opencode(request: sandbox_pb2.ExecuteAgentRequest) -> Invocation:
    argv = ["opencode", "run", "--format", "json", "--auto"]
    if request.model:
        argv += ["-m", request.model]
    if request.resume_session:
        argv += ["--session", request.resume_session]
    files = {}
    if request.mcp_servers:
        mcp = {
            s.name: (
                {"type": "remote", "url": s.url}
                if s.url
                else {"type": "local", "command": [s.command, *s.args], "environment": dict(s.env)}
            )
            for s in request.mcp_servers
        }
        files["~/.config/opencode/opencode.json"] = json.dumps(
            {"$schema": "https://opencode.ai/config.json", "mcp": mcp}
        )
    return Invocation(argv, {"OPENCODE_DISABLE_AUTOUPDATE": "1"}, files, stdin=request.instruction)


def _copilot(request: sandbox_pb2.ExecuteAgentRequest) -> Invocation:
    argv = [
        "copilot",
        "--allow-all",
        "--output-format",
        "json",
        "--no-ask-user",
        "--no-auto-update",
    ]
    if request.model:
        argv += ["--model", request.model]
    if request.resume_session:
        argv += ["--resume", request.resume_session]
    files = {}
    if request.mcp_servers:
        servers = {
            s.name: (
                {"type": "http", "url": s.url, "tools": ["*"]}
                if s.url
                else {"type": "local", "command": s.command, "args": list(s.args), "env": dict(s.env), "tools": ["*"]}
            )
            for s in request.mcp_servers
        }
        files["~/.copilot/mcp-config.json"] = json.dumps({"mcpServers": servers})
    return Invocation(argv, {"COPILOT_AUTO_UPDATE": "false"}, files, stdin=request.instruction)


def _shell(request: sandbox_pb2.ExecuteAgentRequest) -> Invocation:
    # The `shell` agent's instruction is a bash script: running it is the point (deterministic tasks, and
    # runs without a model). It is still one argv element, never spliced into another command, and it comes
    # after `--`, so an instruction such as `--help` or `-c x` is a command bash runs, not one of its options.
    # (Not stdin: the script's own commands would read the rest of it.)
    return Invocation(["bash", "-c", "--", request.instruction])


AGENTS: dict[str, Agent] = {
    agent.name: agent
    for agent in (
        Agent(
            name="claude",
            binary="claude",
            package="@anthropic-ai/claude-code@2.1.197",
            secrets=(("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"),),
            output="claude-stream-json",
            build=_claude,
        ),
        Agent(
            name="codex",
            binary="codex",
            package="@openai/codex@0.171.0",
            secrets=(("OPENAI_API_KEY", "CODEX_API_KEY"),),
            output="codex-json",
            build=_codex,
        ),
        Agent(
            name="copilot",
            binary="copilot",
            package="@github/copilot@1.0.102",
            secrets=(("COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN", "COPILOT_PROVIDER_API_KEY"),),
            output="copilot-json",
            build=_copilot,
        ),
        # Cursor's CLI is not on npm (it installs with its own script): use an image that has it.
        Agent(
            name="cursor",
            binary="cursor-agent",
            package="",
            secrets=(("CURSOR_API_KEY",),),
            output="claude-stream-json",
            build=_cursor,
            operand_prompt=True,
        ),
        # Gemini CLI needs Node 20 or newer; Debian bookworm's nodejs is 18.
        Agent(
            name="gemini",
            binary="gemini",
            package="@google/gemini-cli@0.61.0",
            secrets=(("GEMINI_API_KEY", "GOOGLE_API_KEY"),),
            output="gemini-stream-json",
            build=_gemini,
        ),
        # opencode takes the credentials of whichever model provider it is configured for.
        Agent(
            name="opencode",
            binary="opencode",
            package="opencode-ai@1.18.33",
            secrets=(),
            output="opencode-json",
            build=_opencode,
        ),
        Agent(name="shell", binary="bash", package="", secrets=(), output="text", build=_shell),
    )
}


def get_agent(name: str) -> Agent:
    agent = AGENTS.get(name)
    if agent is None:
        raise invalid_argument(
            "UNKNOWN_AGENT", f"agent must be one of {', '.join(sorted(AGENTS))}, got {name[:40]!r}", field="agent"
        )
    return agent


def agent_for_execution(execution_id: str) -> Agent | None:
    """The agent an execution runs, from its id (agent-<name>-<hex>), so any replica can parse its output."""
    if not execution_id.startswith(EXECUTION_PREFIX):
        return None
    return AGENTS.get(execution_id.removeprefix(EXECUTION_PREFIX).rsplit("-", 1)[0])


AGENT_SCRIPT = script("agent.sh")


def agent_argv(agent: Agent, workspace_dir: str, invocation: Invocation) -> list[str]:
    feed = "stdin" if invocation.stdin is not None else "none"
    return [
        "bash",
        "-c",
        AGENT_SCRIPT,
        "sandbox-agent",
        workspace_dir,
        agent.binary,
        agent.package,
        feed,
        # As the agent user, the client's variables back (exec_scripts.USER_ENV_PREFIX): never the root script's.
        *with_user_env(invocation.argv),
    ]


def script_env(invocation: Invocation) -> dict[str, str]:
    """What the agent script reads from its environment (and unsets before the agent starts): the files to
    write and the agent's stdin."""
    env = {"SANDBOX_FILE_COUNT": str(len(invocation.files))}
    for i, (path, content) in enumerate(invocation.files.items()):
        env[f"SANDBOX_FILE_{i}_PATH"] = path
        env[f"SANDBOX_FILE_{i}_CONTENT"] = content
    if invocation.stdin is not None:
        env["SANDBOX_AGENT_STDIN"] = invocation.stdin
    return env
