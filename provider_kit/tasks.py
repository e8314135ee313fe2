"""Coding tasks: create a sandbox with a repository, run the agent, push, delete.

A task is driven by the provider replica that received RunTask. Its progress is saved inside the sandbox
(TASK_FILE), and every step that takes long is an execution there, so:
- if the client's stream breaks, the driver keeps going without it (and then leaves the sandbox for the
  client to re-attach to; the sandbox's expiry reclaims it),
- AttachTask on any replica replays the task from its saved state and executions, and finishes it (push,
  delete) if the agent is done and nobody else did; commits are serialised inside the sandbox and the push
  (from outside it) of a commit the branch already holds succeeds, so two drivers finishing the same task
  push one commit.

The sandbox can write TASK_FILE too (its agent may be hostile), so the state is sealed (provider_kit/sealed.py)
with the sandbox's full name and tenant: a file that is edited, forged, damaged or copied from another sandbox
is refused with DATA_LOSS TASK_STATE_INVALID and logged as tampering, and every execution it names must be
one of this sandbox's. Replaying an older seal of the same sandbox gains nothing: at worst the task is finished
(pushed) again with the caller's own token, which that tenant may do with PushChanges anyway.

Saving: the state goes through the kit's file writer (stdin or the provider's upload, then an atomic rename),
so its size is not bound by the 128 KiB limit of one argument. A save that fails is retried once; if it fails
again the task's stream ends with UNAVAILABLE TASK_STATE_NOT_SAVED and the sandbox is kept, so that a client
never sees a task outcome that a re-attach would not see too. A re-attach then resumes from the last state
saved: if that was PHASE_PUSH, it pushes again, which for a branch already pushed changes nothing on the
remote and reports the same commit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from provider_kit import exec_scripts
from provider_kit.coding import Coding, require_workspace
from provider_kit.driver import Driver, SandboxRecord
from provider_kit.errors import ApiError, data_loss, not_found, unavailable
from provider_kit.executions import Executions
from provider_kit.files import write_file
from provider_kit.names import ExecutionName, SandboxName, parse_execution_name
from provider_kit.sealed import Sealer, SealError
from provider_kit.workspace import commit_message
from sandbox.v1 import sandbox_pb2

log = logging.getLogger(__name__)
Task = sandbox_pb2.Task
TaskEvent = sandbox_pb2.TaskEvent
TASK_FILE = f"{exec_scripts.BASE_DIR}/task.json"
# A task's state holds at most a diff of MAX_DIFF_CHARS, a commit message and an error: well under
# MAX_STATE_BYTES even base64-encoded. Bigger files are refused unread, so a sandbox cannot make a replica load
# gigabytes.
MAX_STATE_BYTES = 8 * 1024 * 1024
# The push script already cuts its diff at 1 MiB; kept here too, so that a state stays loadable whatever pushes.
MAX_DIFF_CHARS = 1024 * 1024
SEAL_PURPOSE = "task-state"
_MISSING, _NOT_A_FILE = 66, 67
# Reads at most $2 bytes of a regular file (not a symlink, FIFO or directory, which the sandbox may put there;
# the timeout covers one swapped in after the check).
_LOAD = f"""
[ -e "$1" ] || [ -L "$1" ] || exit {_MISSING}
[ -f "$1" ] && [ ! -L "$1" ] || exit {_NOT_A_FILE}
exec timeout 30 head -c "$2" -- "$1"
"""
_DONE = (Task.PHASE_SUCCEEDED, Task.PHASE_FAILED)
_PHASES = frozenset(Task.Phase.values()) - {Task.PHASE_UNSPECIFIED}
_FIELDS = {"task": str, "keep_sandbox": bool, "commit_message": str}
Create = Callable[[sandbox_pb2.CreateSandboxRequest], Awaitable[sandbox_pb2.Sandbox]]


class _InvalidState(Exception):
    """Sealed state that does not decode to a task of its sandbox (for the log only)."""


@dataclass
class TaskState:
    """What a replica needs to finish a task it did not start (never a secret)."""

    task: sandbox_pb2.Task
    keep_sandbox: bool
    commit_message: str

    def encode(self) -> bytes:
        return json.dumps(
            {
                "task": base64.b64encode(self.task.SerializeToString()).decode(),
                "keep_sandbox": self.keep_sandbox,
                "commit_message": self.commit_message,
            }
        ).encode()

    @classmethod
    def decode(cls, content: bytes, name: SandboxName) -> TaskState:
        """The state of the task in sandbox `name`; raises _InvalidState unless it is exactly that."""
        try:
            data = json.loads(content)
            if not isinstance(data, dict) or set(data) != set(_FIELDS):
                raise _InvalidState("its fields are not a task state's")
            if not all(isinstance(data[key], kind) for key, kind in _FIELDS.items()):
                raise _InvalidState("a field has the wrong type")
            task = Task.FromString(base64.b64decode(data["task"], validate=True))
        except (ValueError, RecursionError, binascii.Error, DecodeError) as err:
            raise _InvalidState(f"it does not decode ({type(err).__name__})") from None
        if task.name != str(name) or task.phase not in _PHASES:
            raise _InvalidState("it names another sandbox or no phase")
        for field, required in (("setup_execution", True), ("agent_execution", False)):
            value = getattr(task, field)
            if not value and not required:
                continue
            try:
                execution = parse_execution_name(value)
            except ApiError:
                raise _InvalidState(f"its {field} is not an execution name") from None
            if execution.sandbox != name:
                raise _InvalidState(f"its {field} is not an execution of this sandbox")
        return cls(task, data["keep_sandbox"], data["commit_message"])


class _NotSaved(ApiError):
    """The task's state could not be saved: the task must not go on (or report an outcome) as if it were."""


def _refused(name: SandboxName, why: str) -> ApiError:
    # The log says what was wrong (never the content); the client gets one message for every case, so the
    # refusal tells nothing about what the file named.
    log.warning("refused the task state in sandbox %s, it looks like tampering: %s", name, why)
    return data_loss(
        "TASK_STATE_INVALID",
        f"the task state in sandbox {name} was not saved by this platform for this sandbox (edited, damaged or "
        "copied); the task cannot be resumed: delete the sandbox and run the task again",
    )


class Tasks:
    def __init__(self, driver: Driver, executions: Executions, coding: Coding, sealer: Sealer) -> None:
        self._driver = driver
        self._executions = executions
        self._coding = coding
        self._sealer = sealer
        # Drivers that outlive their client's stream; kept so they are not garbage-collected mid-task.
        self._headless: set[asyncio.Task[None]] = set()

    async def _save(self, name: SandboxName, tenant: str, state: TaskState) -> None:
        """Saves the state sealed for this sandbox and tenant; raises _NotSaved if two attempts failed."""
        blob = self._sealer.seal(SEAL_PURPOSE, state.encode(), sandbox=str(name), tenant=tenant)
        for attempt in (1, 2):
            try:
                await write_file(self._driver, name.native_id, TASK_FILE, blob, 0o600)
                return
            except ApiError as err:
                if err.code == grpc.StatusCode.NOT_FOUND:  # the sandbox is gone: no retry can help
                    raise _NotSaved(err.code, err.reason, err.message, **err.metadata) from None
                problem = f"{err.reason}: {err.message}"
            except Exception as exc:  # a driver's unexpected failure: the task must still not go on unsaved
                problem = type(exc).__name__
            log.warning("could not save the task state of %s (attempt %d): %s", name, attempt, problem)
        raise _NotSaved(
            grpc.StatusCode.UNAVAILABLE,
            "TASK_STATE_NOT_SAVED",
            f"the state of the task in {name} could not be saved; the sandbox is kept: re-attach with AttachTask",
        )

    async def _load(self, name: SandboxName, tenant: str) -> TaskState:
        argv = ["sh", "-c", _LOAD, "sandbox-load", TASK_FILE, str(MAX_STATE_BYTES + 1)]
        result = await self._driver.run(name.native_id, argv)
        if result.code == _MISSING:
            raise not_found("TASK_NOT_FOUND", f"sandbox {name} runs no task")
        if result.code == _NOT_A_FILE:
            raise _refused(name, "it is not a regular file")
        if result.code != 0:
            raise unavailable("TASK_STATE_UNREADABLE", f"could not read the task state of {name}; retry")
        if len(result.stdout) > MAX_STATE_BYTES:
            raise _refused(name, f"it is larger than {MAX_STATE_BYTES} bytes")
        try:
            content = self._sealer.open(SEAL_PURPOSE, result.stdout, sandbox=str(name), tenant=tenant)
            return TaskState.decode(content, name)
        except (SealError, _InvalidState) as err:
            raise _refused(name, str(err)) from None

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
        try:
            tenant = (await record_of(name)).tenant
            await self._save(name, tenant, state)
        except BaseException:
            # The client has not learned the sandbox's name, and without a saved state nobody can attach to it.
            # With a request_id it may be a retry's (the same sandbox, its task under way): a retry reaches it.
            if not request.request_id:
                with contextlib.suppress(Exception):
                    await self._driver.delete(name.native_id)
            raise
        queue: asyncio.Queue[sandbox_pb2.TaskEvent | ApiError | None] = asyncio.Queue()
        listening = True

        def emit(event: sandbox_pb2.TaskEvent) -> None:
            if listening:
                queue.put_nowait(event)

        async def drive() -> None:
            try:
                await self._drive(name, tenant, state, request, emit, record_of, lambda: listening)
            except _NotSaved as err:
                if listening:
                    queue.put_nowait(err)
            finally:
                queue.put_nowait(None)

        driver = asyncio.create_task(drive())
        self._headless.add(driver)
        driver.add_done_callback(self._headless.discard)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, ApiError):
                    raise item
                yield item
        finally:
            listening = False

    async def _drive(
        self,
        name: SandboxName,
        tenant: str,
        state: TaskState,
        request: sandbox_pb2.RunTaskRequest,
        emit: Callable[[sandbox_pb2.TaskEvent], None],
        record_of: Callable[[SandboxName], Awaitable[SandboxRecord]],
        listening: Callable[[], bool],
    ) -> None:
        """Drives the task to its end; raises _NotSaved (the sandbox is then kept) if its state cannot be saved."""
        task = state.task
        emit(TaskEvent(task=task))
        try:
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
                        await self._save(name, tenant, state)
                        emit(TaskEvent(task=task))
                    elif event.WhichOneof("event") == "finished":
                        succeeded = event.finished.state == sandbox_pb2.Execution.STATE_SUCCEEDED
                    emit(TaskEvent(execution_event=event, execution=task.agent_execution))
                if not succeeded:
                    raise _TaskFailed("the agent did not succeed; see the agent execution's output")
                await self._finish(name, tenant, state, request.repository.token, emit, record_of)
            except _NotSaved:
                raise
            except (ApiError, _TaskFailed) as err:
                task.phase = Task.PHASE_FAILED
                task.error = err.message if isinstance(err, ApiError) else str(err)
                await self._save(name, tenant, state)
                emit(TaskEvent(task=task))
            except Exception:
                # The task must still end with a final state; the details stay in the log.
                log.exception("task driver failed", extra={"task": task.name})
                task.phase, task.error = Task.PHASE_FAILED, "internal error while driving the task"
                await self._save(name, tenant, state)
                emit(TaskEvent(task=task))
        except _NotSaved as err:
            log.warning("the task in %s stopped, its state could not be saved (%s); sandbox kept", name, err.reason)
            raise
        if listening() and not state.keep_sandbox:
            await self._driver.delete(name.native_id)

    async def _finish(
        self,
        name: SandboxName,
        tenant: str,
        state: TaskState,
        token: str,
        emit: Callable[[sandbox_pb2.TaskEvent], None],
        record_of: Callable[[SandboxName], Awaitable[SandboxRecord]],
    ) -> None:
        """Pushes, then records and reports success; reports nothing if the final state is not saved."""
        task = state.task
        task.phase = Task.PHASE_PUSH
        await self._save(name, tenant, state)
        emit(TaskEvent(task=task))
        push = sandbox_pb2.PushChangesRequest(sandbox=task.name, message=state.commit_message, token=token)
        task.push.CopyFrom(await self._coding.push(name, await record_of(name), push))
        task.push.diff = task.push.diff[:MAX_DIFF_CHARS]
        task.phase = Task.PHASE_SUCCEEDED
        await self._save(name, tenant, state)
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
        record = await record_of(name)
        tenant = record.tenant
        state = await self._load(name, tenant)
        require_workspace(record, name)
        task = state.task
        queue: list[sandbox_pb2.TaskEvent] = []
        yield TaskEvent(task=task)
        # TaskState.decode checked that both are executions of this sandbox.
        for execution in filter(None, (task.setup_execution, task.agent_execution)):
            setup_ok = await self._follow(parse_execution_name(execution), queue.append)
            for event in queue:
                yield event
            queue.clear()
            if execution == task.setup_execution and not setup_ok and task.phase == Task.PHASE_SETUP:
                task.phase, task.error = Task.PHASE_FAILED, "setup failed; see the setup execution's output"
                await self._save(name, tenant, state)
        latest = await self._load(name, tenant)
        if latest.task.phase == Task.PHASE_SETUP:
            # The replica that started this task died before the agent ran; the agent's secrets were
            # never stored, so nobody can start it now.
            latest.task.phase = Task.PHASE_FAILED
            latest.task.error = "the task's driver stopped before the agent ran"
            await self._save(name, tenant, latest)
        elif latest.task.phase in (Task.PHASE_AGENT, Task.PHASE_PUSH):
            agent_done = (
                latest.task.agent_execution
                and (await self._executions.get(parse_execution_name(latest.task.agent_execution))).state
                == sandbox_pb2.Execution.STATE_SUCCEEDED
            )
            if agent_done:
                try:
                    await self._finish(name, tenant, latest, git_token, queue.append, record_of)
                except _NotSaved:
                    raise
                except ApiError as err:
                    latest.task.phase, latest.task.error = Task.PHASE_FAILED, err.message
                    await self._save(name, tenant, latest)
            else:
                latest.task.phase, latest.task.error = Task.PHASE_FAILED, "the agent did not succeed"
                await self._save(name, tenant, latest)
        for event in queue:
            yield event
        yield TaskEvent(task=latest.task)
        if not latest.keep_sandbox and latest.task.phase in _DONE:
            await self._driver.delete(name.native_id)


class _TaskFailed(Exception):
    @property
    def message(self) -> str:
        return str(self)
