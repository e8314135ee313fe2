"""What an outside review found open after the first round of issue 11 (each test failed then): root in the
sandbox writing through names the agent planted, FIFOs wedging a provider, the client's environment steering
root scripts, forged execution status, sandboxes reaching each other, disk hidden in deleted files.

The agent runs as the `agent` user; it is simulated here with `runuser -u agent` inside RunCommand, or with
the `shell` agent, whose instruction runs exactly as a real agent's tool calls do.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import docker
import grpc
import pytest

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, Collected
from tests.conftest import BASE_IMAGE, OTHER_TENANT_TOKEN
from tests.git_server import GitServer
from tests.harness import ProviderHarness


def _native(name: str) -> str:
    return name.rsplit("/", 1)[1]


async def _with_repo(client: Client, git_server: GitServer) -> pb.Sandbox:
    repo = f"review-{uuid.uuid4().hex[:8]}"
    git_server.create_repo(repo, {"README.md": "hello\n"})
    sandbox = await client.create(repository=pb.RepositorySetup(url=git_server.url(repo), token=git_server.token or ""))
    setup = await client.attach(sandbox.workspace.setup_execution, Collected())
    assert setup.finished is not None and setup.finished.state == pb.Execution.STATE_SUCCEEDED, bytes(setup.stderr)
    return sandbox


@pytest.fixture
async def me(docker_stack: LocalStack) -> AsyncIterator[Client]:
    c = Client(docker_stack.address, docker_stack.client_token)
    yield c
    await c.close()


# -- 1. root writes through symlinks the agent plants in /tmp/.sandbox-executions -------------------------------


async def test_the_runner_never_writes_through_a_symlink_the_agent_planted(me: Client, git_server: GitServer) -> None:
    """The agent links its own execution's not-yet-written status (and rc) file to a path only root may write;
    the root runner must not follow it. On lead it does: with /etc/passwd as the target the agent user
    disappears, and every later `as_agent` (the next agent run, push.sh) runs as root."""
    sandbox = (await _with_repo(me, git_server)).name
    try:
        plant = (
            'id=$(basename "$(ls /tmp/.sandbox-executions/agent-shell-*.runner)" .runner); '
            "ln -s /root/canary-status /tmp/.sandbox-executions/$id.status; "
            "ln -s /root/canary-rc /tmp/.sandbox-executions/$id.rc; echo planted"
        )
        run = await me.run_agent(sandbox, "shell", plant)
        assert bytes(run.stdout) == b"planted\n", bytes(run.stderr)
        check = await me.run(sandbox, ["sh", "-c", "ls /root/canary-status /root/canary-rc 2>/dev/null; true"])
        assert bytes(check.stdout) == b"", f"root wrote through the agent's symlinks: {bytes(check.stdout)!r}"
    finally:
        await me.delete(sandbox)


# -- 2. an agent's FIFO wedges the provider's engine thread pool (every tenant) ---------------------------------


async def test_an_agent_fifo_cannot_wedge_the_provider_for_other_tenants(
    make_stack: Callable[..., LocalStack],
    harnesses: Callable[[str], ProviderHarness],
    docker_client: docker.DockerClient,
) -> None:
    """WriteFile (and every task-state save) writes to `<dir>/.<name>.writing-$$` as root with no timeout,
    inside a call that holds one of the Docker driver's 32 pool threads. The agent creates FIFOs at the next
    pids' temp names: each write then blocks forever, even after its client gave up, and once 32 are stuck
    the replica answers nobody (another tenant's GetSandbox included) until the container is removed."""
    stack = make_stack(harnesses("docker"), extra_tokens={OTHER_TENANT_TOKEN: "other-tenant"})
    spec = pb.SandboxSpec(image=BASE_IMAGE, network_mode="none")
    a = Client(stack.address, stack.client_token, spec=spec)
    b = Client(stack.address, OTHER_TENANT_TOKEN, spec=spec)
    sa = (await a.create()).name
    sb = (await b.create()).name
    try:
        plant = (
            "import os\ncur = os.getpid()\n"
            "for i in range(cur, cur + 3000):\n    os.mkfifo(f'/tmp/.notes.writing-{i}')\n"
        )
        planted = await a.run(sa, ["runuser", "-u", "agent", "--", "python3", "-c", plant])
        assert planted.finished is not None and planted.finished.exit_code == 0, bytes(planted.stderr)
        for _ in range(40):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await a.stub.WriteFile(
                    pb.WriteFileRequest(sandbox=sa, path="/tmp/notes", content=b"x"), metadata=a.metadata, timeout=1
                )
        got = await b.stub.GetSandbox(pb.GetSandboxRequest(name=sb), metadata=b.metadata, timeout=10)
        assert got.name == sb
    finally:
        # Should the replica be wedged again, a delete RPC would wait for a pool thread too: remove directly.
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(_native(sa)).remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(_native(sb)).remove(force=True)
        await a.close()
        await b.close()
        stack.stop()


# -- 3. two tenants' bridge sandboxes reach each other ------------------------------------------------------------


async def test_bridge_sandboxes_join_a_network_without_inter_container_traffic(
    make_stack: Callable[..., LocalStack],
    harnesses: Callable[[str], ProviderHarness],
    docker_client: docker.DockerClient,
) -> None:
    """`bridge` is the default network mode. Docker's own default bridge lets every container reach every other,
    whichever tenant's (the review reached tenant B's dev server from tenant A's agent); bridge sandboxes now
    join the platform's network, made with inter-container traffic off. Checked on the engine's own record
    (tests send no traffic to the engine's bridge addresses)."""
    stack = make_stack(
        harnesses("docker"),
        extra_tokens={OTHER_TENANT_TOKEN: "other-tenant"},
        SANDBOX_DOCKER_NETWORK_MODES="bridge,none",
    )
    spec = pb.SandboxSpec(image=BASE_IMAGE, network_mode="bridge")
    a = Client(stack.address, stack.client_token, spec=spec)
    b = Client(stack.address, OTHER_TENANT_TOKEN, spec=spec)
    sa = (await a.create()).name
    sb = (await b.create()).name
    try:
        for name in (sa, sb):
            networks = docker_client.api.inspect_container(_native(name))["NetworkSettings"]["Networks"]
            assert list(networks) == ["sandbox-isolated"], networks
        options = docker_client.api.inspect_network("sandbox-isolated")["Options"]
        assert options.get("com.docker.network.bridge.enable_icc") == "false", options
        # Still a working network: the sandbox reaches its own loopback server (and ports publish, test_ports).
        fetch = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8765/').status)"
        probe = f'(setsid python3 -m http.server 8765 >/dev/null 2>&1 &); sleep 1; python3 -c "{fetch}"'
        assert bytes((await b.run(sb, ["sh", "-c", probe])).stdout).strip() == b"200"
    finally:
        await a.delete(sa)
        await b.delete(sb)
        await a.close()
        await b.close()
        stack.stop()


# -- 4. the agent's env reaches the root wrapper scripts ------------------------------------------------------------


async def test_agent_env_never_makes_root_run_agent_files(me: Client, git_server: GitServer) -> None:
    """ExecuteAgent's env is meant for the agent, but it is the environment of the whole root chain (the exec
    script, the runner, agent.sh). A tenant that gives its agent PATH with a directory of the agent user (its
    ~/bin, node_modules/.bin) makes root run whatever the agent put there: here agent.sh's `runuser`."""
    sandbox = (await _with_repo(me, git_server)).name
    try:
        plant = (
            "mkdir -p ~/bin && printf '#!/bin/sh\\nid -u > /tmp/runuser-ran-as\\nexec /usr/sbin/runuser \"$@\"\\n'"
            " > ~/bin/runuser && chmod +x ~/bin/runuser && echo planted"
        )
        assert bytes((await me.run_agent(sandbox, "shell", plant)).stdout) == b"planted\n"
        path = "/home/agent/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        await me.run_agent(sandbox, "shell", "true", env={"PATH": path})
        ran = await me.run(sandbox, ["sh", "-c", "cat /tmp/runuser-ran-as 2>/dev/null; true"])
        assert bytes(ran.stdout).strip() != b"0", "root ran the agent's ~/bin/runuser"
    finally:
        await me.delete(sandbox)


# -- 5. execution status and the execution quota come from files the agent writes ---------------------------------


async def test_the_agent_cannot_forge_other_executions_status_or_lift_the_quota(
    make_stack: Callable[..., LocalStack], harnesses: Callable[[str], ProviderHarness]
) -> None:
    """The agent user may create files in /tmp/.sandbox-executions (mode 1777). An `X.status` it writes
    for an execution still running (say the tenant's test run) makes GetExecution and AttachExecution report
    it SUCCEEDED with exit 0, and makes the execution quota (counted from runner files without a status)
    skip it, so the sandbox runs more than SANDBOX_MAX_EXECUTIONS_PER_SANDBOX at once."""
    stack = make_stack(harnesses("docker"), SANDBOX_MAX_EXECUTIONS_PER_SANDBOX="2")
    client = Client(stack.address, stack.client_token, spec=pb.SandboxSpec(image=BASE_IMAGE, network_mode="none"))
    sandbox = (await client.create()).name
    try:

        async def start() -> str:
            stream = client.run_stream(sandbox, ["sh", "-c", "echo up; sleep 30"])
            name = ""
            try:
                async for event in stream:
                    if event.WhichOneof("event") == "started":
                        name = event.started.name
                    elif event.WhichOneof("event") == "output":
                        return name
            finally:
                stream.cancel()
            return name

        problems = []
        # The agent leaves a process behind (setsid: it outlives its execution, as servers may) that writes
        # "exited 0" as the status of every execution that has none yet.
        daemon = (
            "while :; do for f in /tmp/.sandbox-executions/*.runner; do s=${f%.runner}.status; "
            '[ -e "$s" ] || echo "exited 0" > "$s"; done; sleep 0.05; done'
        )
        launch = 'setsid sh -c "$1" </dev/null >/dev/null 2>&1 & echo started'
        await client.run(sandbox, ["runuser", "-u", "agent", "--", "sh", "-c", launch, "sh", daemon])
        await asyncio.sleep(0.5)
        tests = await client.run(sandbox, ["sh", "-c", "sleep 2; exit 3"])
        assert tests.finished is not None
        if (tests.finished.state, tests.finished.exit_code) != (pb.Execution.STATE_FAILED, 3):
            state = pb.Execution.State.Name(tests.finished.state)
            problems.append(f"a command that exits 3 was reported {state} {tests.finished.exit_code}")
        results = await asyncio.gather(*(start() for _ in range(4)), return_exceptions=True)
        started = [r for r in results if isinstance(r, str)]
        if len(started) > 2:
            problems.append(f"{len(started)} executions started at once with a quota of 2")
        if started:
            # Still sleeping: GetExecution (and AttachExecution) must not report an outcome the agent wrote.
            got = await client.stub.GetExecution(pb.GetExecutionRequest(name=started[0]), metadata=client.metadata)
            if got.state != pb.Execution.STATE_RUNNING:
                state = pb.Execution.State.Name(got.state)
                problems.append(f"a running execution was reported {state} exit {got.exit_code}")
        assert not problems, problems
    finally:
        await client.delete(sandbox)
        await client.close()
        stack.stop()


# -- 6. the disk watch does not see a deleted file that is still open ---------------------------------------------


async def test_a_deleted_but_open_file_counts_against_the_disk_limit(
    make_stack: Callable[..., LocalStack],
    harnesses: Callable[[str], ProviderHarness],
    docker_client: docker.DockerClient,
) -> None:
    """Where the engine cannot limit a container's size (overlay2 off xfs+pquota, as here), the disk watch
    pauses a sandbox whose files are over the limit. SizeRw walks the writable layer's directory tree, so a
    file the agent deleted while a process of its own (setsid: it outlives the execution) keeps it open was
    never counted (300 MB under a 64 MiB limit, SizeRw a few bytes); the watch now adds what deleted files
    still open hold."""
    stack = make_stack(harnesses("docker"), SANDBOX_DOCKER_DISK_LIMIT_MB="64", SANDBOX_DOCKER_DISK_CHECK_SECONDS="1")
    client = Client(stack.address, stack.client_token, spec=pb.SandboxSpec(image=BASE_IMAGE, network_mode="none"))
    sandbox = (await client.create()).name
    try:
        hide = (
            "setsid sh -c 'exec 3>/tmp/hidden; rm /tmp/hidden; head -c 300000000 /dev/zero >&3; sleep 600' "
            "</dev/null >/dev/null 2>&1 & sleep 4; echo written"
        )
        try:
            await client.run(sandbox, ["runuser", "-u", "agent", "--", "sh", "-c", hide])
        except grpc.aio.AioRpcError as err:  # frozen while the command still ran
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        await asyncio.sleep(4)
        state = docker_client.api.inspect_container(_native(sandbox))["State"]["Status"]
        assert state == "paused", f"300 MB in a deleted open file: the sandbox is still {state}"
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(_native(sandbox), force=True, v=True)
        await client.close()
        stack.stop()
