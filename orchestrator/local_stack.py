"""Starts the local stack (Docker provider replicas plus orchestrator replicas) on loopback.

    python -m orchestrator.local_stack serve          # prints the address and a client token, runs until ^C
    python -m orchestrator.local_stack run -- CMD...  # runs CMD in a fresh Docker sandbox, streaming its output

Tests use the same ServerProcess/LocalStack classes to start real servers on port 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

STARTUP_TIMEOUT_SECONDS = 30.0


class ServerProcess:
    """One server started as `python -m MODULE`, listening on a kernel-chosen loopback port."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path | None = None) -> None:
        self.module = module
        self.env = {**os.environ, "SANDBOX_LISTEN": "127.0.0.1:0", **env}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> ServerProcess:
        log: IO[bytes] | int = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=subprocess.PIPE, stderr=log
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    break
                self.address = json.loads(line)["address"]
                return self
            if self.process.poll() is not None:
                break
        self.stop()
        where = f"; see {self.log_path}" if self.log_path else ""
        raise RuntimeError(f"{self.module} did not start{where}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful drain), then SIGKILL if it is still there after timeout."""
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


@dataclass
class LocalStack:
    """Provider replicas (Docker by default) and orchestrator replicas wired together on loopback."""

    providers: int = 1
    orchestrators: int = 1
    # Which provider process to run, and its name in resource names.
    provider_module: str = "provider_docker"
    provider_name: str = "docker"
    provider_env: dict[str, str] = field(default_factory=dict)
    orchestrator_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    client_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    provider_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Seals the task state kept in sandboxes: the same for every provider replica, so any of them resumes a task.
    state_keys: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    tenant: str = "local"
    # More clients: token -> tenant.
    extra_tokens: dict[str, str] = field(default_factory=dict)
    provider_processes: list[ServerProcess] = field(default_factory=list)
    orchestrator_processes: list[ServerProcess] = field(default_factory=list)

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    def start(self) -> LocalStack:
        try:
            for i in range(self.providers):
                env = {
                    "SANDBOX_PROVIDER_TOKEN": self.provider_token,
                    "SANDBOX_STATE_KEYS": self.state_keys,
                    # A stack on one's own machine: its own tenant may ask for host networking (the demo's
                    # sandboxes reach a repository served on loopback); provider_env may say otherwise.
                    "SANDBOX_DOCKER_HOST_NETWORK_TENANTS": self.tenant,
                    **self.provider_env,
                }
                log = self._log(f"{self.provider_name}-{i}")
                self.provider_processes.append(ServerProcess(self.provider_module, env, log).start())
            target = "ipv4:" + ",".join(p.address for p in self.provider_processes)
            tokens = {self.client_token: self.tenant, **self.extra_tokens}
            for i in range(self.orchestrators):
                env = {
                    "SANDBOX_PROVIDERS": f"{self.provider_name}={target}",
                    "SANDBOX_PROVIDER_TOKEN": self.provider_token,
                    "SANDBOX_TENANT_TOKENS": ",".join(f"{token}={tenant}" for token, tenant in tokens.items()),
                    **self.orchestrator_env,
                }
                self.orchestrator_processes.append(
                    ServerProcess("orchestrator", env, self._log(f"orchestrator-{i}")).start()
                )
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def address(self) -> str:
        return self.orchestrator_processes[0].address

    def stop(self) -> None:
        for process in [*self.orchestrator_processes, *self.provider_processes]:
            process.stop()


async def run_command(address: str, token: str, argv: list[str], image: str, network: str) -> int:
    """Creates a sandbox, streams argv's output to this terminal, deletes the sandbox; returns the exit code."""
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sandbox_pb2_grpc.SandboxProviderStub(channel)
        spec = sandbox_pb2.SandboxSpec(image=image, network_mode=network)
        sandbox = await stub.CreateSandbox(
            sandbox_pb2.CreateSandboxRequest(provider="docker", spec=spec), metadata=metadata
        )
        print(f"sandbox {sandbox.name} ready", file=sys.stderr)
        finished: Any = None
        try:
            request = sandbox_pb2.RunCommandRequest(sandbox=sandbox.name, argv=argv)
            async for event in stub.RunCommand(request, metadata=metadata):
                kind = event.WhichOneof("event")
                if kind == "output":
                    out = sys.stdout if event.output.stream == sandbox_pb2.OutputChunk.STREAM_STDOUT else sys.stderr
                    out.buffer.write(event.output.data)
                    out.flush()
                elif kind == "finished":
                    finished = event.finished
        finally:
            await stub.DeleteSandbox(sandbox_pb2.DeleteSandboxRequest(name=sandbox.name), metadata=metadata)
            print(f"sandbox {sandbox.name} deleted", file=sys.stderr)
        state = sandbox_pb2.Execution.State.Name(finished.state)
        print(f"execution {finished.name}: {state}, exit code {finished.exit_code}", file=sys.stderr)
        return int(finished.exit_code) if finished.state != sandbox_pb2.Execution.STATE_SUCCEEDED else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.local_stack", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="start the stack and print its address")
    serve.add_argument("--providers", type=int, default=1)
    serve.add_argument("--orchestrators", type=int, default=1)
    run = sub.add_parser("run", help="run one command in a fresh Docker sandbox")
    run.add_argument("--image", default="", help="sandbox image (default: the provider's)")
    run.add_argument("--network", default="none", help="network mode: none (default), bridge or host")
    run.add_argument("argv", nargs="+", help="the command, after --")
    args = parser.parse_args()
    log_dir = Path(os.environ.get("SANDBOX_LOCAL_LOG_DIR", "/tmp/sandbox-local-stack"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.action == "serve":
        stack = LocalStack(args.providers, args.orchestrators, log_dir=log_dir).start()
        print(json.dumps({"address": stack.address, "token": stack.client_token, "logs": str(log_dir)}), flush=True)
        try:
            signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
            signal.sigwait(signals)
        finally:
            stack.stop()
        return
    stack = LocalStack(log_dir=log_dir).start()
    try:
        code = asyncio.run(run_command(stack.address, stack.client_token, args.argv, args.image, args.network))
    finally:
        stack.stop()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
