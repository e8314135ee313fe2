"""State the platform keeps inside a sandbox cannot be forged, copied or corrupted into reaching anything else.

The sandbox's code (a possibly prompt-injected agent, or the tenant through RunCommand and WriteFile) can
write every file there, the task state and the execution status files included. Two tenants on the shared
Docker stack; everything goes through the orchestrator over gRPC, as a client's service would.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import grpc
import pytest
from pydantic import ValidationError

from orchestrator.local_stack import LocalStack
from provider_kit.errors import error_info
from provider_kit.exec_scripts import BASE_DIR
from provider_kit.sealed import Sealer, SealError
from provider_kit.server import exit_on_bad_settings
from provider_kit.settings import ProviderSettings
from provider_kit.tasks import TASK_FILE
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, Collected, expect_error
from tests.conftest import BASE_IMAGE, OTHER_TENANT_TOKEN
from tests.git_server import GitServer, RecordedRequest

TAMPERING = "looks like tampering"


@pytest.fixture
async def other(docker_stack: LocalStack) -> AsyncIterator[Client]:
    """A client of the second tenant on the shared Docker stack."""
    c = Client(docker_stack.address, OTHER_TENANT_TOKEN)
    yield c
    await c.close()


def _repo(git_server: GitServer) -> str:
    name = f"state-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(name, {"README.md": "old title\n"})
    return name


def _task(
    client: Client, git_server: GitServer, repo: str, instruction: str, *, keep: bool = False
) -> pb.RunTaskRequest:
    return pb.RunTaskRequest(
        provider=client.provider,
        spec=client.spec,
        repository=pb.RepositorySetup(url=git_server.url(repo), token=git_server.token or ""),
        agent=pb.ExecuteAgentRequest(agent="shell", instruction=instruction),
        keep_sandbox=keep,
    )


async def _tasks(stream: AsyncIterator[pb.TaskEvent]) -> list[pb.Task]:
    return [event.task async for event in stream if event.WhichOneof("event") == "task"]


async def _with_repo(client: Client, git_server: GitServer) -> pb.Sandbox:
    sandbox = await client.create(
        repository=pb.RepositorySetup(url=git_server.url(_repo(git_server)), token=git_server.token or "")
    )
    setup = await client.attach(sandbox.workspace.setup_execution, Collected())
    assert setup.finished is not None and setup.finished.state == pb.Execution.STATE_SUCCEEDED, bytes(setup.stderr)
    return sandbox


async def _attach_task(client: Client, name: str, git_server: GitServer | None = None) -> list[pb.TaskEvent]:
    token = (git_server.token or "") if git_server else ""
    request = pb.AttachTaskRequest(name=name, git_token=token)
    return [event async for event in client.stub.AttachTask(request, metadata=client.metadata, timeout=60)]


async def _refused_attach(client: Client, name: str) -> tuple[grpc.StatusCode, str, bytes]:
    """AttachTask must fail with DATA_LOSS TASK_STATE_INVALID; returns the status, message and every byte that
    arrived before the failure."""
    received: list[pb.TaskEvent] = []
    request = pb.AttachTaskRequest(name=name)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for event in client.stub.AttachTask(request, metadata=client.metadata, timeout=60):
            received.append(event)
    err = raised.value
    info = error_info(err)
    assert (err.code(), info.reason if info else None) == (grpc.StatusCode.DATA_LOSS, "TASK_STATE_INVALID"), (
        err.details()
    )
    assert "Traceback" not in (err.details() or "")
    return err.code(), err.details() or "", b"".join(event.SerializeToString() for event in received)


def _unsealed_state(task: pb.Task) -> bytes:
    """A task state as the platform wrote it before it was sealed: what an attacker can forge."""
    encoded = base64.b64encode(task.SerializeToString()).decode()
    return json.dumps({"task": encoded, "keep_sandbox": True, "commit_message": "x"}).encode()


async def _read(client: Client, sandbox: str, path: str) -> bytes:
    return b"".join(chunk.data for chunk in await client.read_file(sandbox, path))


def _logs(stack: LocalStack) -> str:
    return "".join(path.read_text(errors="replace") for path in Path(stack.log_dir or ".").glob("*.log"))


def _push_requests(git_server: GitServer, repo: str) -> tuple[list[RecordedRequest], list[RecordedRequest]]:
    """The authorized push negotiations (GET info/refs for git-receive-pack) and pack uploads (POST) to repo."""
    mine = [r for r in git_server.requests if r.repo == repo and r.authorized]
    service = [urllib.parse.parse_qs(r.query).get("service", [""])[0] for r in mine]
    negotiations = [r for r, s in zip(mine, service, strict=True) if r.method == "GET" and s == "git-receive-pack"]
    uploads = [r for r in mine if r.method == "POST" and r.path.endswith("/git-receive-pack")]
    return negotiations, uploads


# -- the seal itself ---------------------------------------------------------------------------------------------


def test_a_seal_binds_content_sandbox_tenant_and_purpose_and_keys_rotate() -> None:
    old, new = "o" * 40, "n" * 40
    sealed = Sealer([old]).seal("task-state", b'{"a": 1}', sandbox="providers/docker/sandboxes/a", tenant="t1")
    rotating = Sealer([new, old])  # the new key seals, the old one still opens
    assert rotating.open("task-state", sealed, sandbox="providers/docker/sandboxes/a", tenant="t1") == b'{"a": 1}'
    resealed = rotating.seal("task-state", b'{"a": 1}', sandbox="providers/docker/sandboxes/a", tenant="t1")
    assert Sealer([new]).open("task-state", resealed, sandbox="providers/docker/sandboxes/a", tenant="t1")
    header, _, body = sealed.partition(b"\n")
    edited = header + b"\n" + body.replace(b"1", b"2")
    refused = {
        "another sandbox": (sealed, "providers/docker/sandboxes/b", "t1", "task-state", rotating),
        "another tenant": (sealed, "providers/docker/sandboxes/a", "t2", "task-state", rotating),
        "another purpose": (sealed, "providers/docker/sandboxes/a", "t1", "other", rotating),
        "edited": (edited, "providers/docker/sandboxes/a", "t1", "task-state", rotating),
        "truncated": (sealed[:-1], "providers/docker/sandboxes/a", "t1", "task-state", rotating),
        "no header": (body, "providers/docker/sandboxes/a", "t1", "task-state", rotating),
        "key dropped": (sealed, "providers/docker/sandboxes/a", "t1", "task-state", Sealer([new])),
        # Moving bytes between the name and the tenant must not keep the tag valid.
        "shifted": (sealed, "providers/docker/sandboxes/at", "1", "task-state", rotating),
    }
    for case, (blob, sandbox, tenant, purpose, sealer) in refused.items():
        with pytest.raises(SealError):
            sealer.open(purpose, blob, sandbox=sandbox, tenant=tenant)
            pytest.fail(f"accepted: {case}")
    assert old.encode() not in sealed  # the key id is a hash, never the key


def test_state_keys_are_validated_without_echoing_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValidationError) as err:
        ProviderSettings(provider_token="p" * 20, state_keys=f"{'a' * 32},short-secret-value")
    with pytest.raises(SystemExit):
        exit_on_bad_settings(err.value)  # what a provider prints when it refuses to start
    said = capsys.readouterr().err
    assert "SANDBOX_STATE_KEYS" in said and "short-secret-value" not in said
    settings = ProviderSettings(provider_token="p" * 20, state_keys=f"{'a' * 32}, {'b' * 32}")
    assert settings.accepted_state_keys() == ["a" * 32, "b" * 32]


# -- task state over the API -------------------------------------------------------------------------------------


async def test_a_forged_task_state_reaches_no_other_sandbox_and_tells_nothing(
    docker_rpc: Client, other: Client, git_server: GitServer, docker_client: docker.DockerClient
) -> None:
    victim, attacker = docker_rpc, other
    canary = f"victim-secret-{uuid.uuid4().hex}"
    target = await victim.create()
    unmanaged = docker_client.containers.run(
        BASE_IMAGE, ["sleep", "300"], detach=True, network_mode="none", labels={"tests.unmanaged": "1"}
    )
    mine = None
    try:
        done = await victim.run(target.name, ["sh", "-c", f"echo {canary}; echo {canary} >&2"])
        assert done.finished is not None and done.finished.exit_code == 0
        # A container the platform does not manage, with an execution's files that a follower would replay.
        unmanaged.exec_run(["sh", "-c", f"mkdir -p {BASE_DIR} && echo {canary} > {BASE_DIR}/x0.out"])
        unmanaged.exec_run(["sh", "-c", f": > {BASE_DIR}/x0.err; echo 'exited 0' > {BASE_DIR}/x0.status"])
        mine = await _with_repo(attacker, git_server)
        forged_names = [
            done.name,  # the other tenant's execution
            f"providers/docker/sandboxes/{unmanaged.id}/executions/x0",
            f"providers/docker/sandboxes/{unmanaged.name}/executions/x0",
            f"providers/docker/sandboxes/{uuid.uuid4().hex}/executions/x0",  # nothing at all
        ]
        answers = set()
        for forged in forged_names:
            for field in ("setup_execution", "agent_execution"):
                task = pb.Task(name=mine.name, phase=pb.Task.PHASE_AGENT, branch=mine.workspace.branch)
                task.setup_execution = mine.workspace.setup_execution
                setattr(task, field, forged)
                await attacker.write_file(mine.name, TASK_FILE, _unsealed_state(task))
                code, message, received = await _refused_attach(attacker, mine.name)
                assert canary.encode() not in received
                answers.add((code, message))
        # One answer whatever the forged name points at: no oracle for which sandboxes or containers exist.
        assert len(answers) == 1
    finally:
        unmanaged.remove(force=True)
        await victim.delete(target.name)
        if mine is not None:
            await attacker.delete(mine.name)


async def test_a_sealed_state_copied_edited_or_truncated_is_refused(
    docker_rpc: Client, docker_stack: LocalStack, git_server: GitServer
) -> None:
    client = docker_rpc
    repo = _repo(git_server)
    request = _task(client, git_server, repo, "echo one > one.txt", keep=True)
    final = (await _tasks(client.stub.RunTask(request, metadata=client.metadata)))[-1]
    assert final.phase == pb.Task.PHASE_SUCCEEDED, final.error
    second = None
    try:
        sealed = await _read(client, final.name, TASK_FILE)
        second = await _with_repo(client, git_server)
        # A valid state of one sandbox, put into another sandbox of the same tenant.
        await client.write_file(second.name, TASK_FILE, sealed)
        await _refused_attach(client, second.name)
        header, _, content = sealed.partition(b"\n")
        assert b'"keep_sandbox": true' in content
        for damaged in (
            header + b"\n" + content.replace(b'"keep_sandbox": true', b'"keep_sandbox": false'),
            sealed[: len(sealed) // 2],
            content,
            header[:-8] + b"00000000\n" + content,
        ):
            await client.write_file(final.name, TASK_FILE, damaged)
            await _refused_attach(client, final.name)
        logs = _logs(docker_stack)
        assert TAMPERING in logs and second.name in logs and final.name in logs
        # The genuine state still opens: the refusals above were about the files, not the sandbox.
        await client.write_file(final.name, TASK_FILE, sealed)
        events = await _attach_task(client, final.name, git_server)
        assert events[-1].task.phase == pb.Task.PHASE_SUCCEEDED
        assert events[-1].task.push.commit_sha == final.push.commit_sha
    finally:
        await client.delete(final.name)
        if second is not None:
            await client.delete(second.name)


async def test_malformed_task_state_files_are_data_loss_never_internal(
    docker_rpc: Client, docker_stack: LocalStack, git_server: GitServer
) -> None:
    client = docker_rpc
    sandbox = await _with_repo(client, git_server)
    canary = f"canary-{uuid.uuid4().hex}"
    try:
        # No file: the sandbox runs no task.
        await expect_error(_attach_task(client, sandbox.name), grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND")
        task = pb.Task(name=sandbox.name, phase=pb.Task.PHASE_SETUP, setup_execution=sandbox.workspace.setup_execution)
        contents = [
            f"not json {canary}".encode(),
            b"{}",
            b"",
            b"[1, 2]",
            b"[" * 100_000,
            json.dumps({"task": f"!!not base64!! {canary}", "keep_sandbox": True, "commit_message": ""}).encode(),
            json.dumps({"task": "//79", "keep_sandbox": 1, "commit_message": ""}).encode(),  # not a Task
            _unsealed_state(task),  # well-formed, but not sealed
            b"sandbox-sealed v1 0123456789abcdef " + b"0" * 64 + b"\n" + _unsealed_state(task),
            b"x" * (9 * 1024 * 1024),  # beyond the largest state: refused unread
        ]
        messages = set()
        for content in contents:
            await client.write_file(sandbox.name, TASK_FILE, content)
            messages.add((await _refused_attach(client, sandbox.name))[1])
        # Things that are not a regular file: the reader must neither block on them nor follow them.
        for make in (
            f"rm -f {TASK_FILE} && mkdir {TASK_FILE}",
            f"rm -rf {TASK_FILE} && mkfifo {TASK_FILE}",
            f"rm -f {TASK_FILE} && ln -s /etc/passwd {TASK_FILE}",
            f"rm -f {TASK_FILE} && ln -s /nonexistent {TASK_FILE}",
        ):
            made = await client.run(sandbox.name, ["sh", "-c", make])
            assert made.finished is not None and made.finished.exit_code == 0, bytes(made.stderr)
            messages.add((await _refused_attach(client, sandbox.name))[1])
        assert len(messages) == 1
        logs = _logs(docker_stack)
        assert TAMPERING in logs and sandbox.name in logs
        assert canary not in logs  # the log names the sandbox, never the file's content
    finally:
        await client.delete(sandbox.name)


async def test_a_task_with_a_large_diff_ends_succeeded_and_a_reattach_does_not_push_again(
    client: Client, git_server: GitServer
) -> None:
    # On every provider: the state is saved through each driver's own way of writing files.
    repo = _repo(git_server)
    # 1.2 MB of new lines: the diff (capped at 1 MiB by the push) and so the task state are far over 128 KiB.
    request = _task(client, git_server, repo, "seq 1 200000 > big.txt", keep=True)
    final = (await _tasks(client.stub.RunTask(request, metadata=client.metadata)))[-1]
    try:
        assert final.phase == pb.Task.PHASE_SUCCEEDED, final.error
        assert len(final.push.diff) >= 1_000_000 and final.push.commit_sha
        assert git_server.rev_parse(repo, final.branch) == final.push.commit_sha
        again = (await _attach_task(client, final.name, git_server))[-1].task
        assert again.phase == pb.Task.PHASE_SUCCEEDED, again.error
        assert again.push.commit_sha == final.push.commit_sha and again.push.diff == final.push.diff
        negotiations, uploads = _push_requests(git_server, repo)
        assert (len(negotiations), len(uploads)) == (1, 1), "the re-attach pushed again"
    finally:
        await client.delete(final.name)


async def test_a_task_whose_state_cannot_be_saved_never_reports_success(
    docker_rpc: Client, git_server: GitServer
) -> None:
    client = docker_rpc
    repo = _repo(git_server)
    stream = client.stub.RunTask(_task(client, git_server, repo, "sleep 3; echo x > x.txt"), metadata=client.metadata)
    seen: list[pb.Task] = []
    name = ""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for event in stream:
            if event.WhichOneof("event") != "task":
                continue
            seen.append(event.task)
            if event.task.agent_execution and not name:
                name = event.task.name
                # While the agent works, its sandbox puts a directory where the state is saved.
                blocked = await client.run(name, ["sh", "-c", f"rm -f {TASK_FILE} && mkdir {TASK_FILE}"])
                assert blocked.finished is not None and blocked.finished.exit_code == 0
    try:
        info = error_info(raised.value)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and info is not None
        assert info.reason == "TASK_STATE_NOT_SAVED", raised.value.details()
        assert name and all(task.phase != pb.Task.PHASE_SUCCEEDED for task in seen)
        assert _push_requests(git_server, repo) == ([], [])  # nothing was pushed past an unsaved state
        await client.get(name)  # the sandbox is kept for a re-attach
        await _refused_attach(client, name)
    finally:
        if name:
            await client.delete(name)


# -- execution status files -----------------------------------------------------------------------------------------


async def test_forged_execution_status_files_are_data_loss_never_internal(docker_rpc: Client) -> None:
    client = docker_rpc
    sandbox = (await client.create()).name
    try:
        done = await client.run(sandbox, ["sh", "-c", "echo hi"])
        assert done.finished is not None and done.finished.exit_code == 0
        files = f"{BASE_DIR}/{done.name.rsplit('/', 1)[1]}"

        async def put(command: str, *args: str) -> None:
            result = await client.run(sandbox, ["sh", "-c", command, "sh", *args])
            assert result.finished is not None and result.finished.exit_code == 0, bytes(result.stderr)

        async def refused() -> None:
            reason = "EXECUTION_STATE_INVALID"
            get = client.stub.GetExecution(pb.GetExecutionRequest(name=done.name), metadata=client.metadata)
            await expect_error(get, grpc.StatusCode.DATA_LOSS, reason)
            await expect_error(client.attach(done.name, Collected()), grpc.StatusCode.DATA_LOSS, reason)
            cancel = client.stub.CancelExecution(pb.CancelExecutionRequest(name=done.name), metadata=client.metadata)
            await expect_error(cancel, grpc.StatusCode.DATA_LOSS, reason)

        for status in ("exited abc", "killed x", "exited 99999999999", "exited 256", "killed -1", "exited", "done"):
            await put('printf "%s\\n" "$1" > "$2"', status, f"{files}.status")
            await refused()
        # What the runner does write is still read as before.
        for status, state, code in (
            ("exited 7", pb.Execution.STATE_FAILED, 7),
            ("killed 137", pb.Execution.STATE_FAILED, 137),
            ("timed_out", pb.Execution.STATE_TIMED_OUT, 0),
            ("cancelled", pb.Execution.STATE_CANCELLED, 0),
            ("exited 0", pb.Execution.STATE_SUCCEEDED, 0),
        ):
            await put('printf "%s\\n" "$1" > "$2"', status, f"{files}.status")
            got = await client.stub.GetExecution(pb.GetExecutionRequest(name=done.name), metadata=client.metadata)
            assert (got.state, got.exit_code, got.stdout_bytes) == (state, code, 3), status
        # The times stat reports are the sandbox's to set too: one before 1970 does not crash the probe.
        await put('touch -d @-100 "$1"', f"{files}.out")
        await refused()
    finally:
        await client.delete(sandbox)
