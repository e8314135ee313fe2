"""Executions: detached processes in a sandbox that any replica can stream, re-attach to, inspect or cancel.

The process state lives in files inside the sandbox (see exec_scripts), so this module keeps nothing in
memory between calls. Those files are the sandbox's to write, so they are parsed like a request: anything the
runner never writes is DATA_LOSS EXECUTION_STATE_INVALID. They carry no MAC: the platform acts on an
execution's outcome only within that sandbox (a task pushes when its agent succeeded), and the code that could
forge a status is the very code whose exit code it reports; a key inside the sandbox would be no secret.

Stream offsets are byte positions in the stdout and stderr files: a client that re-attaches with the sums of
the bytes it received gets the rest, with nothing lost or repeated.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from provider_kit import exec_scripts
from provider_kit.driver import Driver, Output
from provider_kit.errors import ApiError, data_loss, not_found, resource_exhausted, unavailable
from provider_kit.names import ExecutionName, SandboxName
from provider_kit.streams import closing, with_keepalive
from provider_kit.telemetry import EXECUTION_OUTCOMES
from sandbox.v1 import sandbox_pb2

log = logging.getLogger(__name__)
# How long a stopping replica waits for the follower stops it started.
STOP_GRACE_SECONDS = 10.0

Execution = sandbox_pb2.Execution
ExecutionEvent = sandbox_pb2.ExecutionEvent
_STREAMS = {1: sandbox_pb2.OutputChunk.STREAM_STDOUT, 2: sandbox_pb2.OutputChunk.STREAM_STDERR}


def timestamp(when: datetime | float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if isinstance(when, datetime):
        ts.FromDatetime(when)
    else:
        ts.FromNanoseconds(int(when * 1e9))
    return ts


# What the runner writes to {id}.status (exec_scripts.RUNNER): exit codes and `wait` statuses are 0..255.
_STATUS = re.compile(r"(?:(exited|killed) ([0-9]{1,3}))|timed_out|cancelled|")
_MAX_EXIT = 255
# stat's `%n %s %.3Y` lines: a file's size and mtime, which the sandbox can set to anything; bounded so that they
# fit the proto fields (int64 sizes, Timestamps up to the year 9999).
_STAT = re.compile(r"(\S+) ([0-9]{1,19}) ([0-9]{1,12}(?:\.[0-9]{1,9})?)")
_MAX_SIZE = 2**63 - 1
_MAX_EPOCH_SECONDS = 253402300799.0
_STAT_FILES = ("out", "err", "runner", "status")
# The probe prints two short lines and four stat lines; far more is a status file that is not the runner's.
_MAX_PROBE_BYTES = 64 * 1024


def _invalid_state(name: ExecutionName, why: str) -> ApiError:
    # Only the sandbox's own code can have written this, so it is damaged or tampered with: the log says how
    # (never the content), the client gets a stable reason.
    log.warning("refused the state files of execution %s, they look like tampering: %s", name, why)
    return data_loss(
        "EXECUTION_STATE_INVALID",
        f"the state files of execution {name} were not written by this platform (damaged or tampered with)",
    )


def _state_of(name: ExecutionName, status: str, alive: bool) -> tuple[Execution.State.ValueType, int]:
    """Maps the status file's content to a state and exit code; anything the runner never writes is refused."""
    match = _STATUS.fullmatch(status)
    if match is None:
        raise _invalid_state(name, "its status is not one the runner writes")
    kind, number = match[1], match[2]
    if kind is not None:
        code = int(number)
        if code > _MAX_EXIT:
            raise _invalid_state(name, "its status has an exit code above 255")
        if kind == "killed":
            return Execution.STATE_FAILED, code
        return (Execution.STATE_SUCCEEDED if code == 0 else Execution.STATE_FAILED), code
    if status == "timed_out":
        return Execution.STATE_TIMED_OUT, 0
    if status == "cancelled":
        return Execution.STATE_CANCELLED, 0
    return (Execution.STATE_RUNNING if alive else Execution.STATE_LOST), 0


def _parse_probe(name: ExecutionName, output: bytes) -> tuple[str, bool, dict[str, tuple[int, float]]]:
    """The probe's output (exec_scripts probe): status, whether the runner is alive, and (size, mtime) by file."""
    if len(output) > _MAX_PROBE_BYTES:
        raise _invalid_state(name, "its status file is far too large")
    lines = output.decode(errors="replace").splitlines()
    if len(lines) < 2 or not lines[0].startswith("status=") or lines[1] not in ("alive=0", "alive=1"):
        raise _invalid_state(name, "the probe's answer is malformed")
    prefix = f"{exec_scripts.BASE_DIR}/{name.execution_id}."
    files: dict[str, tuple[int, float]] = {}
    for line in lines[2:]:
        match = _STAT.fullmatch(line)
        kind = match[1].removeprefix(prefix) if match and match[1].startswith(prefix) else ""
        if match is None or kind not in _STAT_FILES or kind in files:
            raise _invalid_state(name, "a line of stat output is malformed")
        size, mtime = int(match[2]), float(match[3])
        if size > _MAX_SIZE or mtime > _MAX_EPOCH_SECONDS:
            raise _invalid_state(name, "a file's size or time is out of range")
        files[kind] = (size, mtime)
    return lines[0].removeprefix("status="), lines[1] == "alive=1", files


def new_execution_id(prefix: str = "") -> str:
    """A fresh execution id; the prefix (such as "agent-claude-") tells later readers what it runs."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def _with_redaction(
    argv: list[str], env: dict[str, str], secret_env: dict[str, str] | None
) -> tuple[list[str], dict[str, str]]:
    if not secret_env:
        return argv, env
    env = {
        **env,
        **secret_env,
        "SANDBOX_REDACT": ",".join(secret_env),
        "SANDBOX_REDACT_FILTER": exec_scripts.REDACT_FILTER,
    }
    return exec_scripts.redacting(argv), env


def quota_exceeded(sandbox: SandboxName, maximum: int) -> ApiError:
    return resource_exhausted(
        "QUOTA_EXCEEDED",
        f"sandbox {sandbox.native_id} already runs {maximum} executions, its quota: wait for one to end or cancel "
        "one (the operator sets the quota with SANDBOX_MAX_EXECUTIONS_PER_SANDBOX)",
        quota="executions",
        limit=str(maximum),
    )


class Executions:
    def __init__(self, driver: Driver, keepalive_seconds: float, max_running: int = 0) -> None:
        """max_running: how many executions a sandbox may run at once (0: no limit), counted inside it by the
        start itself, so every replica enforces the same count without a round trip of its own."""
        self._driver = driver
        self._keepalive = keepalive_seconds
        self._max_running = max_running
        self._stopping: set[asyncio.Task[None]] = set()  # follower stops under way (kept from collection)

    async def start(
        self,
        sandbox: SandboxName,
        argv: list[str],
        env: dict[str, str],
        working_dir: str,
        timeout_s: float,
        *,
        secret_env: dict[str, str] | None = None,
        prefix: str = "",
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        """Starts argv detached and streams it: a `started` event, output, keepalives, then `finished`.

        secret_env joins env, and its values are redacted from the output inside the sandbox."""
        name = ExecutionName(sandbox, new_execution_id(prefix))
        start_time = datetime.now(UTC)
        yield ExecutionEvent(
            started=Execution(name=str(name), state=Execution.STATE_RUNNING, start_time=timestamp(start_time))
        )
        argv, env = _with_redaction(argv, env, secret_env)
        tag = secrets.token_hex(8)
        command = exec_scripts.start_command(
            name.execution_id, timeout_s, working_dir, argv, max_running=self._max_running, tag=tag
        )
        async for event in self._follow(name, command, tag, 0, 0, start_time, env):
            yield event

    async def spawn(
        self,
        name: ExecutionName,
        argv: list[str],
        env: dict[str, str],
        working_dir: str,
        timeout_s: float,
        *,
        secret_env: dict[str, str] | None = None,
    ) -> None:
        """Starts argv as execution `name` without following it; does nothing if it was already started."""
        argv, env = _with_redaction(argv, env, secret_env)
        command = exec_scripts.start_command(
            name.execution_id, timeout_s, working_dir, argv, max_running=self._max_running, detached=True
        )
        result = await self._driver.run(name.sandbox.native_id, command, env)
        if result.code == exec_scripts.QUOTA_EXIT:
            raise quota_exceeded(name.sandbox, self._max_running)
        if result.code != 0:
            raise unavailable("SPAWN_FAILED", f"could not start {name}; retry")

    async def attach(
        self, name: ExecutionName, stdout_offset: int, stderr_offset: int
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        """Replays output from the given offsets, then follows live until the execution ends."""
        tag = secrets.token_hex(8)
        command = exec_scripts.command("attach", name.execution_id, str(stdout_offset), str(stderr_offset), tag=tag)
        async for event in self._follow(name, command, tag, stdout_offset, stderr_offset, None):
            yield event

    async def get(self, name: ExecutionName) -> sandbox_pb2.Execution:
        return await self._probe(name, "probe")

    async def cancel(self, name: ExecutionName) -> sandbox_pb2.Execution:
        """Signals the execution's process group (SIGTERM, SIGKILL 10 s later) and returns its state."""
        return await self._probe(name, "cancel")

    async def _follow(
        self,
        name: ExecutionName,
        command: list[str],
        tag: str,
        stdout_offset: int,
        stderr_offset: int,
        start_time: datetime | None,
        env: dict[str, str] | None = None,
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        """Runs the follower `command` (tagged `tag`) and turns what it prints into events."""
        offsets = {1: stdout_offset, 2: stderr_offset}
        process = self._driver.stream(name.sandbox.native_id, command, env)
        # Closed explicitly (also when the client goes away), so the provider's connection is released at once.
        exit_code: int | None = None
        sandbox_gone = False
        try:
            async with closing(with_keepalive(process, self._keepalive)) as events:
                async for item in events:
                    if item is None:
                        yield ExecutionEvent(keepalive=sandbox_pb2.Keepalive(time=timestamp(datetime.now(UTC))))
                    elif isinstance(item, Output):
                        chunk = sandbox_pb2.OutputChunk(
                            stream=_STREAMS[item.fd], offset=offsets[item.fd], data=item.data
                        )
                        offsets[item.fd] += len(item.data)
                        yield ExecutionEvent(output=chunk)
                    else:
                        exit_code = item.code
                        break
        except ApiError as err:
            sandbox_gone = err.code == grpc.StatusCode.NOT_FOUND
            raise
        finally:
            if exit_code is None and not sandbox_gone:
                self._stop_follower(name, tag)
        if exit_code is None:
            raise unavailable("STREAM_INTERRUPTED", f"the stream of {name} ended early; re-attach with AttachExecution")
        if exit_code == 0 and start_time is not None:
            # The common case needs no second round trip: we know everything already.
            finished = Execution(
                name=str(name),
                state=Execution.STATE_SUCCEEDED,
                stdout_bytes=offsets[1],
                stderr_bytes=offsets[2],
                start_time=timestamp(start_time),
                end_time=timestamp(datetime.now(UTC)),
            )
        else:
            try:
                finished = await self.get(name)
            except ApiError as err:
                # A start refused by the quota left no execution behind (a command's own exit code 253 did).
                refused = start_time is not None and exit_code == exec_scripts.QUOTA_EXIT
                if refused and err.reason == "EXECUTION_NOT_FOUND":
                    raise quota_exceeded(name.sandbox, self._max_running) from None
                raise
            if finished.state == Execution.STATE_RUNNING:
                raise unavailable(
                    "STREAM_INTERRUPTED",
                    f"the stream of {name} broke while it still runs; re-attach with AttachExecution",
                )
        EXECUTION_OUTCOMES.add(1, {"state": Execution.State.Name(finished.state)})
        yield ExecutionEvent(finished=finished)

    async def close(self, timeout_s: float = STOP_GRACE_SECONDS) -> None:
        """Waits (at most timeout_s) for the follower stops under way, so a draining replica leaves none behind."""
        if self._stopping:
            await asyncio.wait(set(self._stopping), timeout=timeout_s)

    def _stop_follower(self, name: ExecutionName, tag: str) -> None:
        """Ends a follower nobody reads any more (the client went away, its deadline passed, the stream broke):
        it would otherwise run until the execution ends, hours for an agent. In the background: the caller is
        usually being cancelled, and the execution itself is not touched."""

        async def stop() -> None:
            command = exec_scripts.command("stop", name.execution_id, tag=tag)
            try:
                await self._driver.run(name.sandbox.native_id, command)
            except Exception as exc:  # the sandbox may be gone; nothing else to do
                log.info("could not stop a follower of %s: %s", name, exc)

        try:
            task = asyncio.get_running_loop().create_task(stop())
        except RuntimeError:  # no loop any more (the process is ending): nothing can run the stop
            return
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _probe(self, name: ExecutionName, mode: str) -> sandbox_pb2.Execution:
        result = await self._driver.run(name.sandbox.native_id, exec_scripts.command(mode, name.execution_id))
        if result.code == exec_scripts.NOT_FOUND_EXIT:
            raise not_found("EXECUTION_NOT_FOUND", f"execution {name} does not exist")
        if result.code != 0:
            raise unavailable("PROBE_FAILED", f"could not read the state of {name}; retry")
        status, alive, files = _parse_probe(name, result.stdout)
        state, code = _state_of(name, status, alive)
        execution = Execution(
            name=str(name),
            state=state,
            exit_code=code,
            stdout_bytes=files.get("out", (0, 0.0))[0],
            stderr_bytes=files.get("err", (0, 0.0))[0],
        )
        if "runner" in files:
            execution.start_time.CopyFrom(timestamp(files["runner"][1]))
        if "status" in files:
            execution.end_time.CopyFrom(timestamp(files["status"][1]))
        return execution
