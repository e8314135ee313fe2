"""Core benchmark: the platform against raw docker-py, and the orchestrator hop against calling a provider.

    uv run python -m bench.bench_core [--runs N]

Prints, from one run on this machine:
  - RunCommand(`true`) round trip through orchestrator and provider vs a raw docker-py exec_run
  - CreateSandbox-to-ready vs a raw docker-py create + start with the same settings
  - unary RPC (GetSandbox) p50 and throughput through the orchestrator vs directly to the provider
Baselines are measured in the same run, interleaved with the platform's measurements so drift hits both.
Targets: orchestrator adds < 1 ms p50; command round trip <= 1.3x raw exec; create <= 1.2x raw.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import docker

from orchestrator.local_stack import LocalStack
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client

IMAGE = "sandbox-base:bookworm-2"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def throughput(fn: Callable[[], Awaitable[object]], concurrency: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await fn()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


async def main(runs: int) -> None:
    owner = f"bench-{uuid.uuid4().hex[:8]}"
    docker_client = docker.from_env()
    api = docker_client.api
    stack = LocalStack(
        provider_env={"SANDBOX_DOCKER_OWNER": owner, "SANDBOX_DOCKER_NETWORK_MODES": "host,none"},
        log_dir=Path(tempfile.mkdtemp(prefix="bench-")),
    ).start()
    via_orchestrator = Client(stack.address, stack.client_token)
    direct = Client(
        stack.provider_processes[0].address,
        stack.provider_token,
        extra_metadata=(("x-sandbox-tenant", stack.tenant),),
    )
    spec = pb.SandboxSpec(network_mode="host")
    sandbox = await via_orchestrator.create(spec=spec)
    container = docker_client.containers.get(sandbox.name.rsplit("/", 1)[1])
    raw_names: list[str] = []
    try:
        # Warm up both paths (connections, thread pools, page cache).
        for _ in range(5):
            await via_orchestrator.run(sandbox.name, ["true"])
            await asyncio.to_thread(container.exec_run, ["true"])

        platform_exec, raw_exec = [], []
        for _ in range(runs):
            platform_exec.append(await timed(lambda: via_orchestrator.run(sandbox.name, ["true"])))
            raw_exec.append(await timed(lambda: asyncio.to_thread(container.exec_run, ["true"])))

        # Files of 1 MiB: WriteFile/ReadFile vs the engine's archive API (one tar put / get, no atomic move).
        payload = os.urandom(1 << 20)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo("bench-raw.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        def raw_read() -> bytes:
            stream, _ = container.get_archive("/tmp/bench-raw.bin")
            return b"".join(stream)

        platform_write, raw_write, platform_read, raw_read_times = [], [], [], []
        for _ in range(max(5, runs // 2)):
            platform_write.append(
                await timed(lambda: via_orchestrator.write_file(sandbox.name, "/tmp/bench.bin", payload))
            )
            raw_write.append(await timed(lambda: asyncio.to_thread(container.put_archive, "/tmp", archive.getvalue())))
            platform_read.append(await timed(lambda: via_orchestrator.read_file(sandbox.name, "/tmp/bench.bin")))
            raw_read_times.append(await timed(lambda: asyncio.to_thread(raw_read)))

        def raw_create() -> None:
            name = f"sbx-raw-{uuid.uuid4().hex[:12]}"
            raw_names.append(name)
            host_config = api.create_host_config(
                init=True, nano_cpus=10**9, mem_limit=2 << 30, pids_limit=1024, network_mode="host"
            )
            api.create_container(
                IMAGE,
                name=name,
                entrypoint=["sleep", "infinity"],
                command=[],
                host_config=host_config,
                labels={"sandbox.platform/managed-by": owner},
                detach=True,
            )
            api.start(name)

        platform_create, raw_create_times = [], []
        for _ in range(max(5, runs // 5)):
            start = time.perf_counter()
            created = await via_orchestrator.create(spec=spec)
            platform_create.append(time.perf_counter() - start)
            await via_orchestrator.delete(created.name)
            raw_create_times.append(await timed(lambda: asyncio.to_thread(raw_create)))
            await asyncio.to_thread(api.remove_container, raw_names.pop(), force=True)

        get = pb.GetSandboxRequest(name=sandbox.name)
        orch_unary, direct_unary = [], []
        for _ in range(runs * 4):
            orch_unary.append(
                await timed(lambda: via_orchestrator.stub.GetSandbox(get, metadata=via_orchestrator.metadata))
            )
            direct_unary.append(await timed(lambda: direct.stub.GetSandbox(get, metadata=direct.metadata)))
        orch_rps = await throughput(
            lambda: via_orchestrator.stub.GetSandbox(get, metadata=via_orchestrator.metadata), 16, 3
        )
        direct_rps = await throughput(lambda: direct.stub.GetSandbox(get, metadata=direct.metadata), 16, 3)
    finally:
        for name in raw_names:
            api.remove_container(name, force=True)
        await via_orchestrator.delete(sandbox.name)
        await via_orchestrator.close()
        await direct.close()
        stack.stop()

    p50 = statistics.median
    print(f"runs: {runs} (medians)")
    print(f"{'measure':52} {'platform':>12} {'baseline':>12} {'ratio':>7}")
    rows = [
        ("RunCommand(true) via orchestrator vs docker-py exec_run", p50(platform_exec), p50(raw_exec)),
        ("CreateSandbox to ready vs docker-py create+start", p50(platform_create), p50(raw_create_times)),
        ("GetSandbox p50 via orchestrator vs direct to provider", p50(orch_unary), p50(direct_unary)),
        ("WriteFile 1 MiB via orchestrator vs docker-py put_archive", p50(platform_write), p50(raw_write)),
        ("ReadFile 1 MiB via orchestrator vs docker-py get_archive", p50(platform_read), p50(raw_read_times)),
    ]
    for label, ours, base in rows:
        print(f"{label:52} {ms(ours):>12} {ms(base):>12} {ours / base:6.2f}x")
    print(f"orchestrator hop adds {1000 * (p50(orch_unary) - p50(direct_unary)):.2f} ms at p50 (target < 1 ms)")
    print(
        f"GetSandbox throughput, 16 concurrent: {orch_rps:.0f}/s via orchestrator, {direct_rps:.0f}/s direct "
        f"({orch_rps / direct_rps:.2f}x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    asyncio.run(main(parser.parse_args().runs))
