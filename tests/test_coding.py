"""Coding tasks end to end with the `shell` agent: clone from a real git server on loopback, run the agent,
commit and push, all through the orchestrator; and the git token and agent secrets never leak."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import docker
import grpc
import pytest

from orchestrator.local_stack import LocalStack
from provider_kit.errors import error_info
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, Collected
from tests.git_server import GitServer
from tests.harness import ProviderHarness


def repo(git_server: GitServer, files: dict[str, str] | None = None) -> str:
    name = f"repo-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(name, {"README.md": "old title\n"} if files is None else files)
    return name


def shell_task(
    client: Client, git_server: GitServer, name: str, instruction: str, **repository: object
) -> pb.RunTaskRequest:
    return pb.RunTaskRequest(
        provider=client.provider,
        spec=client.spec,
        repository=pb.RepositorySetup(url=git_server.url(name), token=git_server.token or "", **repository),
        agent=pb.ExecuteAgentRequest(agent="shell", instruction=instruction),
    )


async def collect_task(stream: AsyncIterator[pb.TaskEvent]) -> tuple[list[pb.Task], dict[str, Collected]]:
    tasks: list[pb.Task] = []
    outputs: dict[str, Collected] = {}
    async for event in stream:
        if event.WhichOneof("event") == "task":
            tasks.append(event.task)
        else:
            outputs.setdefault(event.execution, Collected()).add(event.execution_event)
    return tasks, outputs


async def create_with_repo(client: Client, git_server: GitServer, name: str, **setup: object) -> pb.Sandbox:
    sandbox = await client.create(
        repository=pb.RepositorySetup(url=git_server.url(name), token=git_server.token or "", **setup)
    )
    setup_run = await client.attach(sandbox.workspace.setup_execution, Collected())
    assert setup_run.finished is not None
    assert setup_run.finished.state == pb.Execution.STATE_SUCCEEDED, bytes(setup_run.stderr)
    return sandbox


async def test_full_task_pushes_the_agents_commit(client: Client, git_server: GitServer) -> None:
    name = repo(git_server)
    instruction = "echo hello > hello.txt && sed -i 's/old/new/' README.md && echo done"
    request = shell_task(client, git_server, name, instruction, branch_hint="Greet the world!")
    tasks, outputs = await collect_task(client.stub.RunTask(request, metadata=client.metadata))

    final = tasks[-1]
    assert final.phase == pb.Task.PHASE_SUCCEEDED, final.error
    assert tasks[0].phase == pb.Task.PHASE_SETUP
    assert final.branch.startswith("agent/greet-the-world-")
    assert final.push.changed and final.push.files_changed == 2
    assert (final.push.insertions, final.push.deletions) == (2, 1)
    assert "+hello" in final.push.diff
    assert bytes(outputs[final.agent_execution].stdout) == b"done\n"
    setup_output = bytes(outputs[final.setup_execution].stdout)
    assert b" into /workspace" in setup_output and f"==> Ready on branch {final.branch}".encode() in setup_output

    assert final.branch in git_server.branches(name)
    assert git_server.read_file(name, final.branch, "hello.txt") == b"hello\n"
    assert git_server.read_file(name, final.branch, "README.md") == b"new title\n"
    commit = git_server.log(name, final.branch)[0]
    assert commit.sha == final.push.commit_sha
    assert commit.subject.startswith("echo hello > hello.txt")
    assert (commit.author_name, commit.author_email) == ("Sandbox Agent", "agent@sandbox.invalid")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # deleted after the task
        await client.get(final.name)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_git_token_and_secrets_never_leak(
    client: Client,
    git_server: GitServer,
    stack: LocalStack,
    docker_client: docker.DockerClient,
    harness: ProviderHarness,
) -> None:
    name = repo(git_server)
    git_server.clear_requests()
    token = git_server.token or ""
    sandbox = await create_with_repo(client, git_server, name, author=pb.GitAuthor(name="Ada", email="ada@example.com"))
    try:
        secret = f"sk-test-{uuid.uuid4().hex}"
        agent = await client.run_agent(
            sandbox.name,
            "shell",
            'echo "key=$MY_KEY"; echo "$MY_KEY" >&2; git remote -v; cat .git/config',
            secrets={"MY_KEY": secret},
        )
        assert agent.finished is not None and agent.finished.state == pb.Execution.STATE_SUCCEEDED
        out, err = bytes(agent.stdout), bytes(agent.stderr)
        assert b"key=[REDACTED]" in out and err == b"[REDACTED]\n"
        assert git_server.url(name).encode() in out  # the remote URL carries no credentials
        replay = await client.attach(agent.name, Collected())  # any replica replays the redacted bytes
        assert bytes(replay.stdout) == out

        pushed = await client.stub.PushChanges(
            pb.PushChangesRequest(sandbox=sandbox.name, message="touch", token=token), metadata=client.metadata
        )
        assert not pushed.changed  # nothing changed in the workspace

        config = await client.run(sandbox.name, ["cat", "/workspace/.git/config"])
        for text in (bytes(config.stdout), out, err):
            assert token.encode() not in text and secret.encode() not in text
        if harness.name == "docker":
            container = docker_client.containers.get(sandbox.name.rsplit("/", 1)[1])
            assert token not in str(container.labels) and token not in str(container.attrs["Config"]["Env"])
        assert git_server.requests_exposing(token) == []
        logs = "".join(p.read_text() for p in Path(stack.log_dir or ".").glob("*.log"))  # noqa: ASYNC240
        assert token not in logs and secret not in logs
    finally:
        await client.delete(sandbox.name)


@pytest.mark.parametrize(
    "url",
    [
        "--upload-pack=touch /tmp/pwned",
        "ext::sh -c touch% /tmp/pwned",
        "file:///etc",
        "https://user:secret@example.com/repo.git",
        "ftp://example.com/repo.git",
        "https:///no-host",
    ],
)
async def test_dangerous_repository_urls_are_rejected(client: Client, url: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.create(repository=pb.RepositorySetup(url=url))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "secret" not in (err.value.details() or "")


@pytest.mark.parametrize("branch", ["-delete", "a..b", "has space", "end.lock", "a//b", "@", "x@{1}"])
async def test_invalid_branch_names_are_rejected(client: Client, git_server: GitServer, branch: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.create(repository=pb.RepositorySetup(url=git_server.url("x"), branch=branch))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rejected_push_reports_the_remotes_reason(client: Client, git_server: GitServer) -> None:
    name = repo(git_server)
    git_server.reject_pushes(name, "pushes are frozen for the release")
    sandbox = await create_with_repo(client, git_server, name, branch="feature/x")
    try:
        await client.run_agent(sandbox.name, "shell", "echo change >> README.md")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.stub.PushChanges(
                pb.PushChangesRequest(sandbox=sandbox.name, token=git_server.token or ""), metadata=client.metadata
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "pushes are frozen for the release" in (err.value.details() or "")
        info = error_info(err.value)
        assert info is not None and info.reason == "PUSH_REJECTED"
        assert (git_server.token or "") not in (err.value.details() or "")
    finally:
        await client.delete(sandbox.name)


async def test_empty_repository_gets_a_first_branch(client: Client, git_server: GitServer) -> None:
    name = f"empty-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(name, None)
    tasks, _ = await collect_task(
        client.stub.RunTask(
            shell_task(client, git_server, name, "echo '# New' > README.md", branch="start"), metadata=client.metadata
        )
    )
    assert tasks[-1].phase == pb.Task.PHASE_SUCCEEDED, tasks[-1].error
    assert git_server.read_file(name, "start", "README.md") == b"# New\n"


async def test_base_ref_and_depth(client: Client, git_server: GitServer) -> None:
    name = repo(git_server)
    git_server.commit_files(name, "main", {"second.txt": "2\n"})
    git_server.git(name, "branch", "release", "main~1")
    sandbox = await create_with_repo(client, git_server, name, base_ref="release", depth=1)
    try:
        listing = await client.run(sandbox.name, ["sh", "-c", "cd /workspace && ls && git rev-list --count HEAD"])
        assert bytes(listing.stdout) == b"README.md\n1\n"
    finally:
        await client.delete(sandbox.name)


async def test_missing_agent_secret_is_failed_precondition(client: Client, git_server: GitServer) -> None:
    sandbox = await create_with_repo(client, git_server, repo(git_server))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.run_agent(sandbox.name, "claude", "do something")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ANTHROPIC_API_KEY" in (err.value.details() or "")
    finally:
        await client.delete(sandbox.name)


async def test_task_survives_a_lost_stream_and_can_be_reattached(
    stack: LocalStack, harness: ProviderHarness, git_server: GitServer
) -> None:
    first = harness.client(stack.orchestrator_processes[0].address, stack.client_token)
    second = harness.client(stack.orchestrator_processes[1].address, stack.client_token)
    client = first
    name = repo(git_server)
    request = shell_task(client, git_server, name, "sleep 2; echo late > late.txt; echo agent-finished")
    try:
        stream = first.stub.RunTask(request, metadata=first.metadata)
        async for event in stream:
            if event.WhichOneof("event") == "task" and event.task.phase == pb.Task.PHASE_AGENT:
                task_name = event.task.name
                break
        stream.cancel()  # the client goes away mid-agent
        tasks, outputs = await collect_task(
            second.stub.AttachTask(
                pb.AttachTaskRequest(name=task_name, git_token=git_server.token or ""), metadata=second.metadata
            )
        )
        final = tasks[-1]
        assert final.phase == pb.Task.PHASE_SUCCEEDED, final.error
        assert bytes(outputs[final.agent_execution].stdout) == b"agent-finished\n"
        assert git_server.read_file(name, final.branch, "late.txt") == b"late\n"
        with pytest.raises(grpc.aio.AioRpcError):
            await second.get(task_name)  # re-attaching to the end cleaned it up
    finally:
        await first.close()
        await second.close()


async def test_batch_runs_every_task_with_a_concurrency_limit(client: Client, git_server: GitServer) -> None:
    names = [repo(git_server), repo(git_server)]
    instructions = ["echo one > one.txt", "echo two > two.txt"]
    batch = pb.RunTasksRequest(
        tasks=[shell_task(client, git_server, n, i) for n in names for i in instructions], max_concurrency=2
    )
    finals: dict[int, pb.Task] = {}
    async for event in client.stub.RunTasks(batch, metadata=client.metadata):
        assert not event.error, event.error
        if event.task.phase in (pb.Task.PHASE_SUCCEEDED, pb.Task.PHASE_FAILED):
            finals[event.index] = event.task
    assert sorted(finals) == [0, 1, 2, 3]
    assert all(t.phase == pb.Task.PHASE_SUCCEEDED for t in finals.values())
    for index, task in finals.items():
        filename = ["one.txt", "two.txt"][index % 2]
        assert git_server.read_file(names[index // 2], task.branch, filename).strip() in (b"one", b"two")


async def test_unknown_agent_is_invalid(client: Client, git_server: GitServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect_task(
            client.stub.RunTask(
                pb.RunTaskRequest(
                    provider=client.provider,
                    spec=client.spec,
                    repository=pb.RepositorySetup(url=git_server.url("x")),
                    agent=pb.ExecuteAgentRequest(agent="nope", instruction="x"),
                ),
                metadata=client.metadata,
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_reattach_to_a_running_agent_after_killing_its_provider(
    make_stack: Callable[..., LocalStack], harness: ProviderHarness, git_server: GitServer
) -> None:
    stack_a, stack_b = make_stack(harness), make_stack(harness)
    a = harness.client(stack_a.address, stack_a.client_token)
    b = harness.client(stack_b.address, stack_b.client_token)
    sandbox = await create_with_repo(a, git_server, repo(git_server))
    script = "for i in $(seq 1 30); do echo step $i; sleep 0.1; done; echo result > result.txt"
    try:
        collected = Collected()
        request = pb.ExecuteAgentRequest(sandbox=sandbox.name, agent="shell", instruction=script)
        stream = a.stub.ExecuteAgent(request, metadata=a.metadata)
        async for event in stream:
            collected.add(event)
            if collected.stdout.count(b"\n") >= 3:
                break
        stack_a.provider_processes[0].signal(signal.SIGKILL)
        with pytest.raises(grpc.aio.AioRpcError):
            async for event in stream:
                collected.add(event)
        await b.attach(collected.name, collected)
        assert bytes(collected.stdout) == b"".join(b"step %d\n" % i for i in range(1, 31))
        assert collected.finished is not None and collected.finished.state == pb.Execution.STATE_SUCCEEDED
        pushed = await b.stub.PushChanges(
            pb.PushChangesRequest(sandbox=sandbox.name, instruction=script, token=git_server.token or ""),
            metadata=b.metadata,
        )
        assert pushed.changed and pushed.files_changed == 1
    finally:
        await b.delete(sandbox.name)
        await a.close()
        await b.close()


async def test_dependencies_are_detected_and_installed(client: Client, git_server: GitServer) -> None:
    lock = '{"name": "demo", "version": "1.0.0", "lockfileVersion": 3, "requires": true, "packages": {"": {"name": "demo", "version": "1.0.0"}}}'  # noqa: E501
    files = {
        "package.json": '{"name": "demo", "version": "1.0.0"}\n',
        "package-lock.json": lock,
        "requirements.txt": "# no third-party packages\n",
    }
    sandbox = await client.create(
        spec=client.spec,
        repository=pb.RepositorySetup(
            url=git_server.url(repo(git_server, files)), token=git_server.token or "", install_dependencies=True
        ),
    )
    try:
        setup = await client.attach(sandbox.workspace.setup_execution, Collected())
        assert setup.finished is not None
        assert setup.finished.state == pb.Execution.STATE_SUCCEEDED, bytes(setup.stderr)
        log = bytes(setup.stdout)
        assert b"Installing dependencies with npm ci" in log
        assert b"Installing dependencies with pip (requirements.txt)" in log
        venv = await client.run(sandbox.name, ["stat", "-c", "%U", "/workspace/.venv/bin/python"])
        assert bytes(venv.stdout) == b"agent\n"  # dependencies are installed as the agent user
    finally:
        await client.delete(sandbox.name)
