"""Coding steps on a sandbox's workspace: setup at creation, agent runs, commit and push."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from provider_kit import exec_scripts, git_push, validation, workspace
from provider_kit.agents import Agent, agent_for_execution, get_agent
from provider_kit.agents.catalog import EXECUTION_PREFIX, agent_argv, script_env
from provider_kit.agents.parsers import LineParser
from provider_kit.driver import Driver, SandboxRecord
from provider_kit.errors import ApiError, failed_precondition, invalid_argument
from provider_kit.executions import Executions, new_execution_id
from provider_kit.names import ExecutionName, SandboxName
from provider_kit.settings import ProviderSettings
from provider_kit.streams import closing
from sandbox.v1 import sandbox_pb2

MAX_INSTRUCTION_BYTES = 100_000
MAX_MCP_SERVERS = 16
_MCP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SETUP_TIMEOUT_SECONDS = 3600.0


def workspace_of(record: SandboxRecord) -> sandbox_pb2.Workspace | None:
    value = record.metadata.get(workspace.WORKSPACE_METADATA_KEY)
    return workspace.decode_workspace(value) if value else None


def require_workspace(record: SandboxRecord, name: SandboxName) -> sandbox_pb2.Workspace:
    found = workspace_of(record)
    if found is None:
        raise failed_precondition("NO_WORKSPACE", f"sandbox {name} was created without a repository")
    return found


@dataclass(frozen=True)
class _AgentRun:
    agent: Agent
    env: dict[str, str]
    secret_env: dict[str, str]
    timeout: float


class Coding:
    def __init__(self, driver: Driver, executions: Executions, settings: ProviderSettings) -> None:
        self._driver = driver
        self._executions = executions
        self._settings = settings

    def plan_workspace(self, setup: sandbox_pb2.RepositorySetup) -> tuple[workspace.Setup, sandbox_pb2.Workspace]:
        """Validates the repository request and picks the branch and setup execution id (before any side
        effect; both are stored with the sandbox)."""
        checked = workspace.check_setup(
            setup, allow_http=self._settings.git_allow_http, allow_file=self._settings.git_allow_file_urls
        )
        planned = sandbox_pb2.Workspace(
            repository_url=checked.url,
            base_ref=checked.base_ref,
            branch=checked.branch,
            directory=self._settings.workspace_dir,
            # Only the id is known yet; the full name is set once the sandbox exists.
            setup_execution=new_execution_id(workspace.SETUP_EXECUTION_PREFIX),
            author=sandbox_pb2.GitAuthor(name=checked.author[0], email=checked.author[1]),
        )
        return checked, planned

    async def start_setup(self, name: SandboxName, record: SandboxRecord, setup: workspace.Setup) -> None:
        planned = require_workspace(record, name)
        execution = ExecutionName(name, planned.setup_execution)
        native = self._driver.native_git
        if native:
            # Before the setup execution starts, so a clone the remote refuses fails CreateSandbox itself.
            await self._driver.clone_workspace(name.native_id, setup, planned.directory)
        await self._executions.spawn(
            execution,
            setup.argv(planned.directory, cloned=native),
            {},
            "",
            SETUP_TIMEOUT_SECONDS,
            secret_env={} if native else setup.secret_env(),
        )

    def check_agent_request(self, request: sandbox_pb2.ExecuteAgentRequest) -> _AgentRun:
        """Validates an agent request completely, before any side effect."""
        agent = get_agent(request.agent)
        validation.text(request.instruction, "instruction", maximum=MAX_INSTRUCTION_BYTES, required=True)
        agent.check_instruction(request.instruction)
        validation.token(request.model, "model")
        validation.token(request.resume_session, "resume_session")
        secrets = validation.user_env(dict(request.secrets), "secrets")
        env = validation.user_env(dict(request.env), "env")
        if len(request.mcp_servers) > MAX_MCP_SERVERS:
            raise invalid_argument("INVALID_FIELD", f"mcp_servers may hold at most {MAX_MCP_SERVERS} servers")
        mcp_secrets: dict[str, str] = {}
        for i, server in enumerate(request.mcp_servers):
            if not _MCP_NAME.fullmatch(server.name) or bool(server.command) == bool(server.url):
                raise invalid_argument(
                    "INVALID_FIELD", f"mcp_servers[{i}] needs a name and exactly one of command or url"
                )
            validation.env(dict(server.env), f"mcp_servers[{i}].env")
            mcp_secrets.update({f"SANDBOX_MCP_{i}_{k}": v for k, v in server.env.items()})
        timeout = (
            validation.seconds(request.timeout, "timeout", maximum=self._settings.max_command_timeout_seconds)
            if request.HasField("timeout")
            else self._settings.default_agent_timeout_seconds
        )
        agent.check_secrets(request)
        return _AgentRun(agent, env, {**secrets, **mcp_secrets}, timeout)

    async def execute_agent(
        self, name: SandboxName, record: SandboxRecord, request: sandbox_pb2.ExecuteAgentRequest
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        run = self.check_agent_request(request)
        planned = require_workspace(record, name)
        await self._wait_for_setup(ExecutionName(name, planned.setup_execution))
        invocation = run.agent.build(request)
        argv = agent_argv(run.agent, planned.directory, invocation)
        stream = self._executions.start(
            name,
            argv,
            # The client's variables and secrets reach the agent only (agent_argv restores them after the
            # switch to the agent user); the catalog's and the agent script's own go as they are.
            {**exec_scripts.user_env(run.env), **invocation.env, **script_env(invocation)},
            "",
            run.timeout,
            secret_env=exec_scripts.user_env(run.secret_env),
            prefix=f"{EXECUTION_PREFIX}{run.agent.name}-",
        )
        async for event in with_agent_events(stream, LineParser(run.agent.parser)):
            yield event

    async def _wait_for_setup(self, setup: ExecutionName) -> None:
        """Waits until the setup execution has ended: its git processes hold the clone's token in their
        environment, which an agent process of the same user could read (/proc/<pid>/environ)."""
        delay = 0.1
        while True:
            try:
                state = (await self._executions.get(setup)).state
            except ApiError as err:
                if err.reason != "EXECUTION_NOT_FOUND":
                    raise
                raise failed_precondition(
                    "SETUP_NOT_FINISHED", f"the workspace's setup {setup} cannot be found; create a new sandbox"
                ) from err
            if state != sandbox_pb2.Execution.STATE_RUNNING:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def attach(
        self, name: ExecutionName, stream: AsyncIterator[sandbox_pb2.ExecutionEvent], stdout_offset: int
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        """Adds parsed agent events to a re-attached stream when the execution runs an agent."""
        agent = agent_for_execution(name.execution_id)
        if agent is None or agent.parser is None:
            return stream
        return with_agent_events(stream, LineParser(agent.parser, mid_line=stdout_offset > 0))

    async def push(
        self, name: SandboxName, record: SandboxRecord, request: sandbox_pb2.PushChangesRequest
    ) -> sandbox_pb2.PushChangesResponse:
        """Commits in the sandbox as the agent user, then pushes from here (provider_kit/git_push.py): the
        token never enters the sandbox, and the URL and branch come from the sandbox's record."""
        planned = require_workspace(record, name)
        validation.text(request.message, "message", maximum=64_000)
        validation.text(request.instruction, "instruction", maximum=MAX_INSTRUCTION_BYTES)
        message = workspace.commit_message(request.message, request.instruction)
        # check_author also gives the default author to workspaces recorded before authors were.
        author = workspace.check_author(planned.author)
        argv = workspace.push_argv(planned.directory, message, author)
        outside = git_push.OutsidePush(planned.repository_url, request.token, allow_http=self._settings.git_allow_http)
        try:
            async with closing(self._driver.stream(name.native_id, argv, {})) as process:
                # The sandbox's side is bounded by its own timeout; this bounds a sandbox that never answers.
                received = await asyncio.wait_for(outside.receive(process), workspace.PUSH_COMMIT_TIMEOUT_SECONDS + 30)
            if received.code in (124, 137):  # timeout's codes: the step (a hook of the agent's, say) never ended
                raise failed_precondition(
                    "PUSH_FAILED",
                    f"committing the workspace did not finish in {workspace.PUSH_COMMIT_TIMEOUT_SECONDS} s "
                    "(a git hook that never ends?)",
                )
            if received.code != 0:
                raise failed_precondition("PUSH_FAILED", f"committing the workspace failed: {received.stderr[-2000:]}")
            if not received.head or received.head == received.base:
                return sandbox_pb2.PushChangesResponse(changed=False, branch=planned.branch)
            pushed = await outside.push(received.base, planned.branch)
        except TimeoutError:
            raise failed_precondition("PUSH_FAILED", "the sandbox did not answer the commit step in time") from None
        finally:
            await outside.close()
        return sandbox_pb2.PushChangesResponse(
            changed=True,
            commit_sha=pushed.sha,
            branch=planned.branch,
            files_changed=pushed.files_changed,
            insertions=pushed.insertions,
            deletions=pushed.deletions,
            diff=pushed.diff,
        )


async def with_agent_events(
    stream: AsyncIterator[sandbox_pb2.ExecutionEvent], parser: LineParser
) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
    """Passes events through, adding the agent events parsed from stdout right after their bytes."""
    async for event in stream:
        yield event
        if event.WhichOneof("event") == "output" and event.output.stream == sandbox_pb2.OutputChunk.STREAM_STDOUT:
            for parsed in parser.feed(event.output.data):
                yield sandbox_pb2.ExecutionEvent(agent=parsed)
