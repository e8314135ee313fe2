"""Bad input gets INVALID_ARGUMENT (or the code that says what to fix), a reason, and leaves nothing behind.
The autouse no_leaked_containers fixture checks that no container survives any of these calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from provider_kit.errors import error_info
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client

INVALID = grpc.StatusCode.INVALID_ARGUMENT
Call = Callable[[Client, str], Awaitable[Any]]


def create(**fields: Any) -> Call:
    async def call(c: Client, _: str) -> Any:
        spec = dict(fields)  # a fresh copy per call: the same case runs once per provider
        labels = spec.pop("labels", {})
        request_id = spec.pop("request_id", "")
        provider = spec.pop("provider", "")
        spec.setdefault("network_mode", c.spec.network_mode)
        return await c.create(provider, spec=pb.SandboxSpec(**spec), labels=labels, request_id=request_id)

    return call


def run(argv: list[str], **kwargs: Any) -> Call:
    async def call(c: Client, sandbox: str) -> Any:
        return await c.run(sandbox, argv, **kwargs)

    return call


def rpc(method: str, request: Any) -> Call:
    """Calls method; names written for docker below are rewritten for the provider under test."""

    async def call(c: Client, _: str) -> Any:
        message = type(request)()
        message.CopyFrom(request)  # a fresh copy per call: the same case runs once per provider
        for field in ("name", "parent"):
            value = getattr(message, field, "")
            if value.startswith("providers/docker"):
                setattr(message, field, value.replace("providers/docker", f"providers/{c.provider}", 1))
        result = getattr(c.stub, method)(message, metadata=c.metadata)
        if hasattr(result, "read"):  # a stream: read its first event to get the status
            return await result.read()
        return await result

    return call


CASES: dict[str, tuple[Call, grpc.StatusCode, str]] = {
    "name without a provider": (rpc("GetSandbox", pb.GetSandboxRequest(name="sbx-1")), INVALID, "INVALID_NAME"),
    "empty native id": (
        rpc("GetSandbox", pb.GetSandboxRequest(name="providers/docker/sandboxes/")),
        INVALID,
        "INVALID_NAME",
    ),
    "option-like native id": (
        rpc("DeleteSandbox", pb.DeleteSandboxRequest(name="providers/docker/sandboxes/-rf")),
        INVALID,
        "INVALID_NAME",
    ),
    "path traversal in execution": (
        rpc("GetExecution", pb.GetExecutionRequest(name="providers/docker/sandboxes/a/executions/../../x")),
        INVALID,
        "INVALID_NAME",
    ),
    "unknown provider on create": (create(provider="nope"), INVALID, "UNKNOWN_PROVIDER"),
    "unknown provider in name": (
        rpc("GetSandbox", pb.GetSandboxRequest(name="providers/nope/sandboxes/x")),
        INVALID,
        "UNKNOWN_PROVIDER",
    ),
    "malformed image": (create(image="bad image!"), INVALID, "INVALID_FIELD"),
    "negative page size": (
        rpc("ListSandboxes", pb.ListSandboxesRequest(parent="providers/docker", page_size=-1)),
        INVALID,
        "INVALID_FIELD",
    ),
    "forged page token": (
        rpc("ListSandboxes", pb.ListSandboxesRequest(parent="providers/docker", page_token="!!")),
        INVALID,
        "INVALID_FIELD",
    ),
    "too many labels": (create(labels={f"k{i}": "v" for i in range(33)}), INVALID, "INVALID_FIELD"),
    "bad label key": (create(labels={"Bad Key": "v"}), INVALID, "INVALID_FIELD"),
    "bad request id": (create(request_id="has spaces"), INVALID, "INVALID_FIELD"),
    "negative cpus": (create(milli_cpus=-1), INVALID, "INVALID_FIELD"),
    "ttl too long": (create(ttl=duration_pb2.Duration(seconds=10**9)), INVALID, "INVALID_FIELD"),
    "bad env name in spec": (create(env={"1BAD": "x"}), INVALID, "INVALID_FIELD"),
    "empty argv": (run([]), INVALID, "INVALID_FIELD"),
    "oversized argv": (run(["echo", "x" * 300_000]), INVALID, "INVALID_FIELD"),
    "NUL in argv": (run(["echo", "a\0b"]), INVALID, "INVALID_FIELD"),
    "bad env name": (run(["true"], env={"A-B": "x"}), INVALID, "INVALID_FIELD"),
    "relative working dir": (run(["true"], working_dir="tmp"), INVALID, "INVALID_FIELD"),
    "negative timeout": (run(["true"], timeout=duration_pb2.Duration(seconds=-1)), INVALID, "INVALID_FIELD"),
    "negative offset": (
        rpc(
            "AttachExecution",
            pb.AttachExecutionRequest(name="providers/docker/sandboxes/a/executions/abc", stdout_offset=-5),
        ),
        INVALID,
        "INVALID_FIELD",
    ),
    "missing sandbox": (
        rpc("GetSandbox", pb.GetSandboxRequest(name="providers/docker/sandboxes/sbx-doesnotexist")),
        grpc.StatusCode.NOT_FOUND,
        "SANDBOX_NOT_FOUND",
    ),
}


# Limits and images are the Docker provider's own (each provider has its operator's limits).
DOCKER_CASES: dict[str, tuple[Call, grpc.StatusCode, str]] = {
    "missing image": (
        create(image="no-such-image:404"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "IMAGE_NOT_FOUND",
    ),
    "memory over the limit": (create(memory_bytes=1 << 40), INVALID, "LIMIT_EXCEEDED"),
    "network mode not allowed": (create(network_mode="bridge"), INVALID, "NETWORK_MODE_NOT_ALLOWED"),
    "mount not allowed": (create(mounts=[pb.Mount(source="/etc", target="/host-etc")]), INVALID, "MOUNT_NOT_ALLOWED"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input_gets_a_clear_error(case: str, client: Client, sandbox: str) -> None:
    call, code, reason = CASES[case]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(client, sandbox)
    assert err.value.code() == code, err.value.details()
    info = error_info(err.value)
    assert info is not None and info.reason == reason
    assert "Traceback" not in (err.value.details() or "")


@pytest.mark.parametrize("case", list(DOCKER_CASES))
async def test_bad_docker_input_gets_a_clear_error(case: str, docker_rpc: Client) -> None:
    call, code, reason = DOCKER_CASES[case]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(docker_rpc, "")
    assert err.value.code() == code, err.value.details()
    info = error_info(err.value)
    assert info is not None and info.reason == reason


async def test_unknown_provider_error_names_the_configured_ones(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.create("nope")
    assert f"configured providers: {client.provider}" in (err.value.details() or "")


async def test_missing_execution_is_not_found(client: Client, sandbox: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.GetExecution(
            pb.GetExecutionRequest(name=f"{sandbox}/executions/nosuchexec"), metadata=client.metadata
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
