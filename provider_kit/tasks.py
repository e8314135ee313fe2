"""Coding tasks: create a sandbox with a repository, run the agent, push, delete.

A task is driven by the provider replica that received RunTask. Its progress is saved inside the sandbox
(TASK_FILE), and every step that takes long is an execution there, so:
- if the client's stream breaks, the driver keeps going without it (and then leaves the sandbox for the
  client to re-attach to; the sandbox's expiry reclaims it),
- AttachTask on any replica replays the task from its saved state and executions, and finishes it (push,
  delete) if the agent is done and nobody else did; pushes are serialised inside the sandbox, so two
  drivers finishing the same task push once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from provider_kit.coding import Coding, require_workspace
from provider_kit.driver import Driver, SandboxRecord
from provider_kit.errors import ApiError, not_found
from provider_kit.executions import Executions
from provider_kit.names import ExecutionName, SandboxName, parse_execution_name
from provider_kit.workspace import commit_message
from sandbox.v1 import sandbox_pb2

log = logging.getLogger(__name__)
Task = sandbox_pb2.Task
TaskEvent = sandbox_pb2.TaskEvent
TASK_FILE = "/tmp/.sandbox-executions/task.json"
_SAVE = 'umask 077; mkdir -p "$(dirname "$2")"; printf %s "$1" > "$2.tmp" && mv "$2.tmp" "$2"'
_DONE = (Task.PHASE_SUCCEEDED, Task.PHASE_FAILED)
Create = Callable[[sandbox_pb2.CreateSandboxRequest], Awaitable[sandbox_pb2.Sandbox]]


@dataclass
class TaskState:
    """What a replica needs to finish a task it did not start (never a secret)."""

    task: sandbox_pb2.Task
    keep_sandbox: bool
    commit_message: str

    def encode(self) -> str:
        return json.dumps(
            {
                "task": base64.b64encode(self.task.SerializeToString()).decode(),
                "keep_sandbox": self.keep_sandbox,
                "commit_message": self.commit_message,
            }
        )

    @classmethod
    def decode(cls, text: str) -> TaskState:
        data = json.loads(text)
        return cls(Task.FromString(base64.b64decode(data["task"])), data["keep_sandbox"], data["commit_message"])


class Tasks:
    def __init__(self, driver: Driver, executions: Executions, coding: Coding) -> None:
        self._driver = driver
        self._executions = executions
        self._coding = coding
        # Drivers that outlive their client's stream; kept so they are not garbage-collected mid-task.
        self._headless: set[asyncio.Task[None]] = set()

    async def _save(self, name: SandboxName, state: TaskState) -> None:
        await self._driver.run(name.native_id, ["sh", "-c", _SAVE, "sandbox-task", state.encode(), TASK_FILE])

    async def _load(self, name: SandboxName) -> TaskState:
        result = await self._driver.run(name.native_id, ["cat", TASK_FILE])
        if result.code != 0:
            raise not_found("TASK_NOT_FOUND", f"sandbox {name} runs no task")
        return TaskState.decode(result.stdout.decode())

    async def run(
        self,
        request: sandbox_pb2.RunTaskRequest,
        create: Create,
        record_of: Callable[[SandboxName], Awaitable[SandboxRecord]],
    ) -> AsyncIterator[sandbox_pb2.TaskEvent]:
        """Creates the sandbox and drives the task, streaming its events; the drive continues if the stream
        is closed early."""
        self._coding.check_agent_request(request.agent)
        sandbox = await create(
            sandbox_pb2.CreateSandboxRequest(
                provider=request.provider,
                request_id=request.request_id,
                spec=request.spec,
                labels=request.labels,
                repository=request.repository,
            )
        )
        name = SandboxName(request.provider, sandbox.name.rsplit("/", 1)[1])
        state = TaskState(
            Task(
                name=sandbox.name,
                phase=Task.PHASE_SETUP,
                setup_execution=sandbox.workspace.setup_execution,
                branch=sandbox.workspace.branch,
            ),
            request.keep_sandbox,
            commit_message(request.commit_message, request.agent.instruction),
        )
        await self._save(name, state)
        queue: asyncio.Queue[sandbox_pb2.TaskEvent | None] = asyncio.Queue()
        listening = True

        def emit(event: sandbox_pb2.TaskEvent) -> None:
            if listening:
                queue.put_nowait(event)

        async def drive() -> None:
            try:
                await self._drive(name, state, request, emit, record_of, lambda: listening)
            finally:
                queue.put_nowait(None)

        driver = asyncio.create_task(drive())
        self._headless.add(driver)
        driver.add_done_callback(self._headless.discard)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            listening = False

    async def _drive(
        self,
        name: SandboxName,
        state: TaskState,
        request: sandbox_pb2.RunTaskRequest,
        emit: Callable[[sandbox_pb2.TaskEvent], None],
        record_of: Callable[[SandboxName], Awaitable[SandboxRecord]],
        listening: Callable[[], bool],
    ) -> None:
        task = state.task
        emit(TaskEvent(task=task))
        try:
            if not await self._follow(parse_execution_name(task.setup_execution), emit):
                raise _TaskFailed("setup failed; see the setup execution's output")
            task.phase = Task.PHASE_AGENT
            agent_request = sandbox_pb2.ExecuteAgentRequest()
            agent_request.CopyFrom(request.agent)
            agent_request.sandbox = task.name
            succeeded = False
            async for event in self._coding.execute_agent(name, await record_of(name), agent_request):
                if event.WhichOneof("event") == "started":
                    task.agent_execution = event.started.name
                    await self._save(name, state)
                    emit(TaskEvent(task=task))
                elif event.WhichOneof("event") == "finished":
                    succeeded = event.finished.state == sandbox_pb2.Execution.STATE_SUCCEEDED
                emit(TaskEvent(execution_event=event, execution=task.agent_execution))
            if not succeeded:
                raise _TaskFailed("the agent did not succeed; see the agent execution's output")
            await self._finish(name, state, request.repository.token, emit, record_of)
        except (ApiError, _TaskFailed) as err:
            task.phase = Task.PHASE_FAILED
            task.error = err.message if isinstance(err, ApiError) else str(err)
            await self._save(name, state)
            emit(TaskEvent(task=task))
        except Exception:
            # The task must still end with a final state; the details stay in the log.
            log.exception("task driver failed", extra={"task": task.name})
            task.phase, task.error = Task.PHASE_FAILED, "internal error while driving the task"
            with contextlib.suppress(Exception):
                await self._save(name, state)
            emit(TaskEvent(task=task))
        if listening() and not state.keep_sandbox:
            await self._driver.delete(name.native_id)

    async def _finish(
        self,
        name: SandboxName,
        state: TaskState,
        token: str,
        emit: Callable[[sandbox_pb2.TaskEvent], None],
        record_of: Callable[[SandboxName], Awaitable[SandboxRecord]],
    ) -> None:
        task = state.task
        task.phase = Task.PHASE_PUSH
        await self._save(name, state)
        emit(TaskEvent(task=task))
        push = sandbox_pb2.PushChangesRequest(sandbox=task.name, message=state.commit_message, token=token)
        task.push.CopyFrom(await self._coding.push(name, await record_of(name), push))
        task.phase = Task.PHASE_SUCCEEDED
        await self._save(name, state)
        emit(TaskEvent(task=task))

    async def _follow(self, execution: ExecutionName, emit: Callable[[sandbox_pb2.TaskEvent], None]) -> bool:
        succeeded = False
        async for event in self._coding.attach(execution, self._executions.attach(execution, 0, 0), 0):
            if event.WhichOneof("event") == "finished":
                succeeded = event.finished.state == sandbox_pb2.Execution.STATE_SUCCEEDED
            emit(TaskEvent(execution_event=event, execution=str(execution)))
        return succeeded

    async def attach(
        self,
        name: SandboxName,
        git_token: str,
        record_of: Callable[[SandboxName], Awaitable[SandboxRecord]],
    ) -> AsyncIterator[sandbox_pb2.TaskEvent]:
        """Replays a task from its start and follows it; finishes it if its driver is gone."""
        state = await self._load(name)
        require_workspace(await record_of(name), name)
        task = state.task
        queue: list[sandbox_pb2.TaskEvent] = []
        yield TaskEvent(task=task)
        for execution in filter(None, (task.setup_execution, task.agent_execution)):
            setup_ok = await self._follow(parse_execution_name(execution), queue.append)
            for event in queue:
                yield event
            queue.clear()
            if execution == task.setup_execution and not setup_ok and task.phase == Task.PHASE_SETUP:
                task.phase, task.error = Task.PHASE_FAILED, "setup failed; see the setup execution's output"
                await self._save(name, state)
        latest = await self._load(name)
        if latest.task.phase == Task.PHASE_SETUP:
            # The replica that started this task died before the agent ran; the agent's secrets were
            # never stored, so nobody can start it now.
            latest.task.phase = Task.PHASE_FAILED
            latest.task.error = "the task's driver stopped before the agent ran"
            await self._save(name, latest)
        elif latest.task.phase in (Task.PHASE_AGENT, Task.PHASE_PUSH):
            agent_done = (
                latest.task.agent_execution
                and (await self._executions.get(parse_execution_name(latest.task.agent_execution))).state
                == sandbox_pb2.Execution.STATE_SUCCEEDED
            )
            if agent_done:
                try:
                    await self._finish(name, latest, git_token, queue.append, record_of)
                except ApiError as err:
                    latest.task.phase, latest.task.error = Task.PHASE_FAILED, err.message
                    await self._save(name, latest)
            else:
                latest.task.phase, latest.task.error = Task.PHASE_FAILED, "the agent did not succeed"
                await self._save(name, latest)
        for event in queue:
            yield event
        yield TaskEvent(task=latest.task)
        if not latest.keep_sandbox and latest.task.phase in _DONE:
            await self._driver.delete(name.native_id)


class _TaskFailed(Exception):
    @property
    def message(self) -> str:
        return str(self)
