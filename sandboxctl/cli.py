"""sandboxctl: run coding tasks and manage sandboxes from a terminal or a script.

Talks to an orchestrator (--address / SANDBOXCTL_ADDRESS, --token / SANDBOXCTL_TOKEN), or starts a
throwaway local stack on loopback with --local. --json prints one JSON object per event, for machines.

Exit codes: 0 success; 1 the task or command failed; 2 bad input (INVALID_ARGUMENT); 3 not found or wrong
state (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION); 4 unavailable, try again (UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED); 5 not allowed (UNAUTHENTICATED, PERMISSION_DENIED); 6 other errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf import duration_pb2, json_format
from rich.console import Console

from sandbox.v1 import sandbox_pb2 as pb
from sandbox.v1 import sandbox_pb2_grpc
from sandboxctl.progress import TaskProgress

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, rich_markup_mode=None)
err_console = Console(stderr=True)
T = TypeVar("T")

EXIT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.ALREADY_EXISTS: 3,
    grpc.StatusCode.FAILED_PRECONDITION: 3,
    grpc.StatusCode.UNAVAILABLE: 4,
    grpc.StatusCode.DEADLINE_EXCEEDED: 4,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 4,
    grpc.StatusCode.UNAUTHENTICATED: 5,
    grpc.StatusCode.PERMISSION_DENIED: 5,
}

Address = Annotated[str, typer.Option(envvar="SANDBOXCTL_ADDRESS", help="orchestrator address, host:port")]
Token = Annotated[str, typer.Option(envvar="SANDBOXCTL_TOKEN", help="client bearer token", show_default=False)]
Local = Annotated[bool, typer.Option("--local", help="start a throwaway local stack (Docker) for this command")]
Json = Annotated[bool, typer.Option("--json", help="print JSON lines instead of a live display")]
TokenEnv = Annotated[str, typer.Option(help="local environment variable holding the git token")]
GIT_TOKEN_ENV = "GIT_TOKEN"  # noqa: S105  (a variable's name, not a secret)


def to_json(message: Any) -> str:
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


def parse_pairs(values: list[str], what: str, *, from_env: bool = False) -> dict[str, str]:
    """NAME=VALUE options; with from_env, a bare NAME takes the value of that local environment variable."""
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            if not from_env or name not in os.environ:
                raise typer.BadParameter(f"{what} must be NAME=VALUE{' or the name of a set variable' * from_env}")
            rest = os.environ[name]
        pairs[name] = rest
    return pairs


@contextlib.contextmanager
def connection(
    address: str, token: str, local: bool
) -> Iterator[tuple[sandbox_pb2_grpc.SandboxProviderAsyncStub, Any]]:
    """A stub and call metadata for the chosen orchestrator (a local stack's when --local)."""
    stack = None
    if local:
        from orchestrator.local_stack import LocalStack  # imported here: only --local needs subprocesses

        log_dir = Path(os.environ.get("SANDBOX_LOCAL_LOG_DIR", "/tmp/sandbox-local-stack"))
        log_dir.mkdir(parents=True, exist_ok=True)
        stack = LocalStack(
            log_dir=log_dir,
            provider_env={"SANDBOX_GIT_ALLOW_HTTP": "true", "SANDBOX_DOCKER_NETWORK_MODES": "bridge,host,none"},
        ).start()
        address, token = stack.address, stack.client_token
    if not address:
        raise typer.BadParameter("give --address (or SANDBOXCTL_ADDRESS), or use --local")
    try:
        channel = grpc.aio.insecure_channel(address)
        yield sandbox_pb2_grpc.SandboxProviderStub(channel), (("authorization", f"Bearer {token}"),)
    finally:
        if stack is not None:
            stack.stop()


def run_async(make: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Runs a command, turning RPC errors into a message and the documented exit code."""
    try:
        code = asyncio.run(make())
    except grpc.aio.AioRpcError as err:
        err_console.print(f"error: {err.code().name}: {err.details()}")
        raise typer.Exit(EXIT_CODES.get(err.code(), 6)) from None
    raise typer.Exit(code)


async def stream_output(events: AsyncIterable[pb.ExecutionEvent], as_json: bool) -> int:
    """Writes an execution's output to stdout/stderr (or JSON lines); returns its exit code."""
    finished: pb.Execution | None = None
    async for event in events:
        kind = event.WhichOneof("event")
        if as_json:
            print(to_json(event), flush=True)
        elif kind == "output":
            target = sys.stdout if event.output.stream == pb.OutputChunk.STREAM_STDOUT else sys.stderr
            target.buffer.write(event.output.data)
            target.flush()
        elif kind == "started":
            err_console.print(f"[dim]execution {event.started.name}[/dim]")
        if kind == "finished":
            finished = event.finished
    if finished is None:
        return 6
    if not as_json:
        err_console.print(f"[dim]{pb.Execution.State.Name(finished.state)}, exit code {finished.exit_code}[/dim]")
    if finished.state == pb.Execution.STATE_SUCCEEDED:
        return 0
    return finished.exit_code or 1


def repository(repo: str, base_ref: str, branch: str, depth: int, install_deps: bool, git_token_env: str,
               hint: str = "") -> pb.RepositorySetup:  # fmt: skip
    return pb.RepositorySetup(
        url=repo, base_ref=base_ref, branch=branch, depth=depth, install_dependencies=install_deps,
        branch_hint=hint, token=os.environ.get(git_token_env, ""),
    )  # fmt: skip


@app.command()
def run(
    repo: Annotated[str, typer.Option(help="repository URL to clone")],
    instruction: Annotated[str, typer.Option("--instruction", "-i", help="what the agent should do")],
    agent: Annotated[str, typer.Option(help="claude, codex, copilot, cursor, gemini, opencode or shell")] = "shell",
    model: Annotated[str, typer.Option(help="model for the agent")] = "",
    base_ref: Annotated[str, typer.Option(help="branch, tag or commit to start from")] = "",
    branch: Annotated[str, typer.Option(help="branch to push (generated when empty)")] = "",
    depth: Annotated[int, typer.Option(help="shallow clone depth (0: full)")] = 0,
    install_deps: Annotated[bool, typer.Option("--install-deps", help="install the repository's dependencies")] = False,
    secret: Annotated[list[str], typer.Option(help="NAME=VALUE or NAME (from your environment); repeatable")] = [],  # noqa: B006
    env: Annotated[list[str], typer.Option(help="NAME=VALUE for the agent; repeatable")] = [],  # noqa: B006
    git_token_env: TokenEnv = GIT_TOKEN_ENV,
    message: Annotated[str, typer.Option(help="commit message (default: from the instruction)")] = "",
    keep: Annotated[bool, typer.Option("--keep", help="keep the sandbox after the task")] = False,
    provider: Annotated[str, typer.Option(help="sandbox provider")] = "docker",
    image: Annotated[str, typer.Option(help="sandbox image")] = "",
    network: Annotated[str, typer.Option(help="sandbox network mode")] = "",
    timeout: Annotated[int, typer.Option(help="agent timeout in seconds (0: the server's default)")] = 0,
    address: Address = "",
    token: Token = "",
    local: Local = False,
    as_json: Json = False,
) -> None:
    """Run a complete coding task: sandbox, clone, agent, commit, push; show the pushed branch and diff."""
    request = pb.RunTaskRequest(
        provider=provider,
        spec=pb.SandboxSpec(image=image, network_mode=network),
        repository=repository(repo, base_ref, branch, depth, install_deps, git_token_env, instruction),
        agent=pb.ExecuteAgentRequest(
            agent=agent, instruction=instruction, model=model,
            secrets=parse_pairs(secret, "--secret", from_env=True), env=parse_pairs(env, "--env"),
            timeout=duration_pb2.Duration(seconds=timeout) if timeout else None,
        ),
        commit_message=message,
        keep_sandbox=keep,
    )  # fmt: skip

    async def go() -> int:
        with connection(address, token, local) as (stub, metadata):
            return await follow_task(stub.RunTask(request, metadata=metadata), as_json)

    run_async(go)


async def follow_task(events: AsyncIterable[pb.TaskEvent], as_json: bool) -> int:
    progress = TaskProgress(err_console, live=not as_json and err_console.is_terminal)
    final: pb.Task | None = None
    with progress:
        async for event in events:
            if as_json:
                print(to_json(event), flush=True)
            progress.update(event)
            if event.WhichOneof("event") == "task":
                final = event.task
    if final is None:
        return 6
    if not as_json:
        progress.summary(final)
    return 0 if final.phase == pb.Task.PHASE_SUCCEEDED else 1


@app.command()
def create(
    repo: Annotated[str, typer.Option(help="repository URL to clone (optional)")] = "",
    base_ref: Annotated[str, typer.Option(help="branch, tag or commit to start from")] = "",
    branch: Annotated[str, typer.Option(help="branch to create (generated when empty)")] = "",
    depth: Annotated[int, typer.Option(help="shallow clone depth (0: full)")] = 0,
    install_deps: Annotated[bool, typer.Option("--install-deps")] = False,
    git_token_env: TokenEnv = GIT_TOKEN_ENV,
    provider: Annotated[str, typer.Option()] = "docker",
    image: Annotated[str, typer.Option()] = "",
    network: Annotated[str, typer.Option()] = "",
    port: Annotated[list[int], typer.Option(help="a port to reach from outside; repeatable")] = [],  # noqa: B006
    label: Annotated[list[str], typer.Option(help="KEY=VALUE; repeatable")] = [],  # noqa: B006
    request_id: Annotated[str, typer.Option(help="idempotency key")] = "",
    address: Address = "",
    token: Token = "",
    as_json: Json = False,
) -> None:
    """Create a sandbox (optionally with a repository, following its setup) and print its name."""
    request = pb.CreateSandboxRequest(
        provider=provider, request_id=request_id, labels=parse_pairs(label, "--label"),
        spec=pb.SandboxSpec(image=image, network_mode=network, ports=port),
        repository=repository(repo, base_ref, branch, depth, install_deps, git_token_env) if repo else None,
    )  # fmt: skip

    async def go() -> int:
        with connection(address, token, False) as (stub, metadata):
            sandbox = await stub.CreateSandbox(request, metadata=metadata)
            print(to_json(sandbox) if as_json else sandbox.name, flush=True)
            if not as_json:
                for endpoint in sandbox.endpoints:
                    # Header values are credentials: named here, shown only in --json output.
                    needs = f" (send header {', '.join(sorted(endpoint.headers))})" if endpoint.headers else ""
                    err_console.print(f"port {endpoint.port}: {endpoint.url}{needs}", highlight=False)
            if sandbox.workspace.setup_execution:
                attach = pb.AttachExecutionRequest(name=sandbox.workspace.setup_execution)
                return await stream_output(stub.AttachExecution(attach, metadata=metadata), as_json)
            return 0

    run_async(go)


@app.command("exec")
def exec_(
    sandbox: Annotated[str, typer.Argument(help="sandbox name")],
    argv: Annotated[list[str], typer.Argument(help="the command, after --")],
    workdir: Annotated[str, typer.Option(help="working directory")] = "",
    env: Annotated[list[str], typer.Option(help="NAME=VALUE; repeatable")] = [],  # noqa: B006
    timeout: Annotated[int, typer.Option(help="seconds (0: the server's default)")] = 0,
    address: Address = "",
    token: Token = "",
    as_json: Json = False,
) -> None:
    """Run a command in a sandbox, streaming its output; exits with the command's exit code."""
    request = pb.RunCommandRequest(
        sandbox=sandbox, argv=argv, working_dir=workdir, env=parse_pairs(env, "--env"),
        timeout=duration_pb2.Duration(seconds=timeout) if timeout else None,
    )  # fmt: skip

    async def go() -> int:
        with connection(address, token, False) as (stub, metadata):
            return await stream_output(stub.RunCommand(request, metadata=metadata), as_json)

    run_async(go)


@app.command()
def attach(
    name: Annotated[str, typer.Argument(help="an execution name, or a sandbox name to attach to its task")],
    stdout_offset: Annotated[int, typer.Option(help="stdout bytes already received")] = 0,
    stderr_offset: Annotated[int, typer.Option(help="stderr bytes already received")] = 0,
    git_token_env: TokenEnv = GIT_TOKEN_ENV,
    address: Address = "",
    token: Token = "",
    as_json: Json = False,
) -> None:
    """Re-attach to an execution (replaying from offsets) or to a coding task, and follow it to the end."""

    async def go() -> int:
        with connection(address, token, False) as (stub, metadata):
            if "/executions/" in name:
                request = pb.AttachExecutionRequest(name=name, stdout_offset=stdout_offset, stderr_offset=stderr_offset)
                return await stream_output(stub.AttachExecution(request, metadata=metadata), as_json)
            task = pb.AttachTaskRequest(name=name, git_token=os.environ.get(git_token_env, ""))
            return await follow_task(stub.AttachTask(task, metadata=metadata), as_json)

    run_async(go)


@app.command()
def push(
    sandbox: Annotated[str, typer.Argument(help="sandbox name")],
    message: Annotated[str, typer.Option(help="commit message")] = "",
    git_token_env: TokenEnv = GIT_TOKEN_ENV,
    address: Address = "",
    token: Token = "",
    as_json: Json = False,
) -> None:
    """Commit the workspace's changes and push its branch."""
    request = pb.PushChangesRequest(sandbox=sandbox, message=message, token=os.environ.get(git_token_env, ""))

    async def go() -> int:
        with connection(address, token, False) as (stub, metadata):
            result = await stub.PushChanges(request, metadata=metadata)
            if as_json:
                print(to_json(result))
            elif not result.changed:
                print("no changes to push")
            else:
                print(f"pushed {result.branch} at {result.commit_sha}: {result.files_changed} files, "
                      f"+{result.insertions} -{result.deletions}")  # fmt: skip
            return 0

    run_async(go)


@app.command()
def upload(
    sandbox: Annotated[str, typer.Argument(help="sandbox name")],
    source: Annotated[Path, typer.Argument(help="local file ('-' for stdin)", allow_dash=True)],
    path: Annotated[str, typer.Argument(help="absolute path in the sandbox")],
    mode: Annotated[str, typer.Option(help="permission bits in octal, such as 755")] = "644",
    address: Address = "",
    token: Token = "",
) -> None:
    """Write a local file (at most 10 MiB) into a sandbox, replacing the file there."""
    try:
        bits = int(mode, 8)
    except ValueError:
        raise typer.BadParameter("--mode must be octal permission bits, such as 755") from None
    content = sys.stdin.buffer.read() if str(source) == "-" else source.read_bytes()
    request = pb.WriteFileRequest(sandbox=sandbox, path=path, content=content, mode=bits)

    async def go() -> int:
        with connection(address, token, False) as (stub, metadata):
            written = await stub.WriteFile(request, metadata=metadata)
            err_console.print(f"wrote {written.size} bytes to {written.path}")
            return 0

    run_async(go)


@app.command()
def download(
    sandbox: Annotated[str, typer.Argument(help="sandbox name")],
    path: Annotated[str, typer.Argument(help="absolute path in the sandbox")],
    target: Annotated[Path, typer.Argument(help="local file ('-' for stdout)", allow_dash=True)] = Path("-"),
    address: Address = "",
    token: Token = "",
) -> None:
    """Copy a file out of a sandbox (streamed; a partial local file is removed if the copy fails)."""

    async def go() -> int:
        with connection(address, token, False) as (stub, metadata):
            chunks = stub.ReadFile(pb.ReadFileRequest(sandbox=sandbox, path=path), metadata=metadata)
            if str(target) == "-":
                async for chunk in chunks:
                    sys.stdout.buffer.write(chunk.data)
                sys.stdout.buffer.flush()
                return 0
            partial = target.with_name(f".{target.name}.partial")
            try:
                with partial.open("wb") as out:
                    async for chunk in chunks:
                        out.write(chunk.data)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
            return 0

    run_async(go)


@app.command("list")
def list_(
    provider: Annotated[str, typer.Option()] = "docker",
    label: Annotated[list[str], typer.Option(help="KEY=VALUE filter; repeatable")] = [],  # noqa: B006
    address: Address = "",
    token: Token = "",
    as_json: Json = False,
) -> None:
    """List your sandboxes on a provider."""

    async def go() -> int:
        with connection(address, token, False) as (stub, metadata):
            page_token = ""
            while True:
                request = pb.ListSandboxesRequest(
                    parent=f"providers/{provider}", labels=parse_pairs(label, "--label"), page_token=page_token
                )
                page = await stub.ListSandboxes(request, metadata=metadata)
                for sandbox in page.sandboxes:
                    state = pb.Sandbox.State.Name(sandbox.state).removeprefix("STATE_").lower()
                    print(to_json(sandbox) if as_json else f"{sandbox.name}\t{state}\t{sandbox.workspace.branch}")
                page_token = page.next_page_token
                if not page_token:
                    return 0

    run_async(go)


@app.command()
def delete(
    sandboxes: Annotated[list[str], typer.Argument(help="sandbox names")],
    address: Address = "",
    token: Token = "",
) -> None:
    """Delete sandboxes (deleting one that is already gone succeeds)."""

    async def go() -> int:
        with connection(address, token, False) as (stub, metadata):
            for name in sandboxes:
                await stub.DeleteSandbox(pb.DeleteSandboxRequest(name=name), metadata=metadata)
                print(f"deleted {name}")
            return 0

    run_async(go)


@app.command()
def providers(address: Address = "", token: Token = "", local: Local = False, as_json: Json = False) -> None:
    """Show the configured providers and whether each is ready."""

    async def go() -> int:
        with connection(address, token, local) as (stub, metadata):
            reply = await stub.ListProviders(pb.ListProvidersRequest(), metadata=metadata)
            for status in reply.providers:
                ready = "ready" if status.ready else f"not ready ({status.detail})"
                print(to_json(status) if as_json else f"{status.name}\t{ready}")
            return 0 if all(p.ready for p in reply.providers) else 1

    run_async(go)


def main() -> None:
    app()
