"""A seeded, bounded fuzz run of every SandboxProvider RPC (issue 11): at least REQUESTS_PER_RPC requests per
RPC, against the orchestrator and directly against a provider, with hostile field values (random and huge
strings, unicode, NUL, option-shaped values, path traversal, names next to real sandboxes' names, bad page
tokens, bad durations, overflowing numbers, unknown enum values), valid but nonexistent names, and raw or
mutated bodies. No answer may be INTERNAL or UNKNOWN, and no message may carry implementation details.

The RPCs come from the service descriptor, so a new RPC is fuzzed without a change here. Requests that could
create a sandbox (CreateSandbox, RunTask, RunTasks) always carry one field that validation refuses before any
side effect (the autouse no_leaked_containers fixture proves no container was left), and requests that reach
the two real sandboxes only do harmless things there (paths under /tmp, no agent from the catalog).

Reproduce a failure with SANDBOX_FUZZ_SEED=<seed printed> (and SANDBOX_FUZZ_REQUESTS to change the size).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import os
import random
import re
import string
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message

from orchestrator.local_stack import LocalStack
from provider_kit.errors import error_info
from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client
from tests.conftest import OTHER_TENANT_TOKEN

SEED = int(os.environ.get("SANDBOX_FUZZ_SEED", "20261201"))
REQUESTS_PER_RPC = int(os.environ.get("SANDBOX_FUZZ_REQUESTS", "2000"))
IN_FLIGHT = 32
DEADLINE_SECONDS = 20.0
SERVICE = pb.DESCRIPTOR.services_by_name["SandboxProvider"]
# RPCs whose valid requests would create sandboxes: every generated request carries a poison.
CREATING = {"CreateSandbox", "RunTask", "RunTasks"}

# What an answer must never show: a Python exception's class name, a traceback, an attribute error...
_EXCEPTIONS = sorted(
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
)
LEAK = re.compile(
    r"Traceback|File \"|line \d+, in |object has no attribute|<class |<module |Unexpected <|\bNoneType\b"
    r"|\b(?:" + "|".join(_EXCEPTIONS) + r"|DecodeError|ValidationError|APIError|DockerException|NotFound"
    r"|ImageNotFound|JSONDecodeError|AioRpcError)\b"
)
# Codes the server chooses for what the caller sent: each must say why in an ErrorInfo.
EXPLAINED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
# Answers that are allowed but worth a look in the run's summary.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


@dataclass
class Target:
    """A server to fuzz and how to call it."""

    name: str
    # Every replica of that server: requests go round the replicas.
    addresses: list[str]
    metadata: tuple[tuple[str, str], ...]
    # Metadata variants for a few requests: no credentials, a wrong token, a hostile tenant header.
    other_metadata: list[tuple[tuple[str, str], ...]]


@dataclass
class Real:
    """The real resources the fuzzer aims near: its own sandbox (and a finished execution in it) and another
    tenant's sandbox."""

    own: str
    execution: str
    other: str


# ---- values ---------------------------------------------------------------------------------------------

OPTIONS = ["-x", "--help", "-", "--", "--version", "-oProxyCommand=id", "--upload-pack=touch /tmp/pwned", "-rf"]
TRAVERSAL = ["../../etc/passwd", "/../../..", "..", "/tmp/../../etc/shadow", "./.", "%2e%2e%2f", "\\..\\..\\"]
SHELL = ["$(id)", "`id`", "; id", "| id", "&& id", "${IFS}", "'", '"', "\\", "\n", "\r\n", "\t"]
FORMAT = ["%s%s%s%n", "{0}", "{}", "%(x)s", "{__class__}"]
UNICODE = ["é", "ß", "ǅ", "İ", "ﬁ", "\u202e", "\u200b", "\ufeff", "\U0001d518", "😀", "\uff21", "\u0301", "\uffff"]
PROGRAMS = ["true", "echo", "printf", "ls", "env", "id", "uname"]


def _unicode_char(rng: random.Random) -> str:
    while True:
        code = rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0x80, 0x800), rng.randrange(0x800, 0x110000)])
        if not 0xD800 <= code <= 0xDFFF:  # surrogates cannot be encoded as UTF-8
            return chr(code)


# Characters of large values left for the request being built: most requests stay small (the run must be
# quick), one in BIG_EVERY may hold a few big fields, never far over the servers' 16 MiB limit.
_budget = [0]
SMALL_BUDGET = 8192
BIG_BUDGET = 17 * (1 << 20)
BIG_EVERY = 40


def _big(size: int) -> bool:
    """Whether a value of size characters still fits the request's budget (and takes it if so)."""
    if size > _budget[0]:
        return False
    _budget[0] -= size
    return True


def text(rng: random.Random) -> str:
    """A hostile string of any kind."""
    kind = rng.randrange(16)
    if kind in (9, 10) and not _big(1 << 20 if kind == 10 else 65536):
        kind = 14
    if kind == 0:
        return ""
    if kind == 1:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 40)))
    if kind == 2:
        return "".join(_unicode_char(rng) for _ in range(rng.randrange(1, 20)))
    if kind == 3:
        return rng.choice(OPTIONS) + rng.choice(["", "=x", " x", "\0"])
    if kind == 4:
        return rng.choice(TRAVERSAL)
    if kind == 5:
        return rng.choice(SHELL) + rng.choice(["", "x"])
    if kind == 6:
        return rng.choice(FORMAT)
    if kind == 7:
        return "a\0b" if rng.random() < 0.5 else "\0"
    if kind == 8:
        return rng.choice(UNICODE) * rng.randrange(1, 5)
    if kind == 9:
        # Around the limits: 63/64, 127/128/129, 200/201, 4096/4097, 64 KiB, 256 KiB + 1 characters.
        return rng.choice("aZ9-_.") * rng.choice([63, 64, 127, 128, 129, 200, 201, 255, 256, 4096, 4097, 65536])
    if kind == 10:
        return "x" * rng.choice([256 * 1024 + 1, 1024 * 1024]) if rng.random() < 0.2 else "y" * 1000
    if kind == 11:
        return " " * rng.randrange(1, 4)
    if kind == 12:
        return str(rng.choice([0, -1, 2**31, 2**63, -(2**63), 1e308]))
    if kind == 13:
        return rng.choice(["null", "{}", "[]", "true", "None", "nan", "inf", "-0"])
    if kind == 14:
        return rng.choice(["a", "Z", "0", "a" + "-" * 3, "a.b", "a/b", "a:b", "A_B", "a=b"])
    return "".join(rng.choice(string.ascii_lowercase + string.digits + "-_.") for _ in range(rng.randrange(1, 30)))


# Requests that reach a real sandbox run commands in it (tens of milliseconds each, one sandbox's commands
# queue behind each other): a few percent of them, the rest are refused or missing at once.
REAL_SHARE = 0.03


def native_id(rng: random.Random, real: Real) -> str:
    """A sandbox id: next to a real one, valid but missing, or broken."""
    own = real.own.rsplit("/", 1)[1]
    other = real.other.rsplit("/", 1)[1]
    base = rng.choice([own, other, other])
    kind = rng.randrange(9)
    if kind == 0:
        return base[: rng.randrange(1, len(base))]  # a prefix
    if kind == 1:
        return base + rng.choice(["0", "-", ".", "x", "/", "\0", " ", "%00", "é"])  # a suffix
    if kind == 2:
        return base.upper()
    if kind == 3:
        return "".join(rng.choice("0123456789abcdef") for _ in range(rng.choice([1, 2, 12, 64, 65])))
    if kind == 4:
        return f"sbx-{rng.getrandbits(80):020x}"  # valid, missing
    if kind == 5:
        return rng.choice(["", ".", "..", "-sbx", "_x", "a" * 128, "a" * 129, "sbx-1/../x", "sbx\n"])
    return text(rng)


def sandbox_name(rng: random.Random, real: Real) -> str:
    if rng.random() < REAL_SHARE:
        return rng.choice([real.own, real.other])
    kind = rng.randrange(11)
    if kind < 6:
        return f"providers/docker/sandboxes/{native_id(rng, real)}"
    if kind == 6:
        provider = rng.choice(["e2b", "Docker", "", "docker ", "dock", "a" * 32, "docker/sandboxes", "é"])
        return f"providers/{provider}/sandboxes/{native_id(rng, real)}"
    if kind == 7:
        return rng.choice([real.own, real.other]) + rng.choice(["/", "/executions/x", "//", "/..", "?x", "#x"])
    if kind == 8:
        return rng.choice(["providers/docker", "providers/docker/sandboxes", "/providers/docker/sandboxes/x", ""])
    return text(rng)


def execution_name(rng: random.Random, real: Real) -> str:
    execution_id = real.execution.rsplit("/", 1)[1]
    derived = rng.choice(
        [
            execution_id + rng.choice(["x", "-", "0"]),  # a suffix
            execution_id[: rng.randrange(1, len(execution_id))],  # a prefix
            f"{rng.getrandbits(64):016x}",  # valid, missing
            execution_id,
        ]
    )
    if rng.random() < REAL_SHARE:
        return real.execution if rng.random() < 0.5 else f"{real.own}/executions/{derived}"
    kind = rng.randrange(6)
    if kind < 2:
        return f"{real.other}/executions/{derived}"  # the other tenant's sandbox
    if kind == 2:
        return real.execution + rng.choice(["/", "\0", "/executions/x", "é", " "])
    if kind == 3:
        return f"{sandbox_name(rng, real)}/executions/{rng.choice([derived, text(rng)])}"
    if kind == 4:
        return f"providers/docker/sandboxes/sbx-{rng.getrandbits(80):020x}/executions/{derived}"
    return text(rng)


def path(rng: random.Random) -> str:
    """Paths that stay harmless inside a sandbox (under /tmp), or that validation refuses."""
    kind = rng.randrange(8)
    if kind < 3:
        return f"/tmp/fuzz-{rng.randrange(10**6)}" + rng.choice(["", "/x", "/../y", "/./z", "é", "\n", "/ "])
    if kind == 3:
        return rng.choice(["", "tmp/x", "./x", "../x", "~/x", "-x", "--help", "/tmp/\0x", "//tmp//x"])
    if kind == 4:
        return "/tmp/" + "a" * rng.choice([255, 256, 4091, 4092, 5000])
    if kind == 5:
        return "/tmp/fuzz-dir/" if rng.random() < 0.5 else "/tmp"
    if kind == 6:
        return "/tmp/" + rng.choice(TRAVERSAL).lstrip("/")
    return text(rng)


def integer(rng: random.Random, field: descriptor.FieldDescriptor) -> int:
    unsigned = field.type in (field.TYPE_UINT32, field.TYPE_UINT64, field.TYPE_FIXED32, field.TYPE_FIXED64)
    wide = field.type in (field.TYPE_INT64, field.TYPE_UINT64, field.TYPE_SINT64, field.TYPE_SFIXED64)
    bits = 64 if wide else 32
    if unsigned:
        return rng.choice([0, 1, 2**bits - 1, 2 ** (bits - 1), rng.randrange(2**bits), 65535, 65536, 22])
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return rng.choice([0, 1, -1, low, high, rng.randrange(low, high), 1000, 1001, 10**9])


def fill(rng: random.Random, msg: message.Message, real: Real, depth: int = 0) -> None:
    """Sets a random subset of msg's fields to hostile values."""
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        repeated = field.is_repeated
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(msg, field.name)
            value_field = field.message_type.fields_by_name["value"]
            for _ in range(rng.choice([0, 1, 2, 3, 40])):
                key = text(rng) if rng.random() < 0.5 else rng.choice(["a", "x.y/z", "HOME", "PATH", "SANDBOX_X"])
                if value_field.message_type is not None:
                    if depth < 2:
                        fill(rng, target[key], real, depth + 1)
                else:
                    target[key] = text(rng)
            continue
        count = rng.choice([1, 1, 2, 3, 0, 9, 5000]) if repeated else 1
        if count == 5000 and (field.type == field.TYPE_MESSAGE or not _big(5000 * 16)):
            count = 3
        for _ in range(count):
            value = _value(rng, field, msg, real, depth)
            if value is None:
                continue
            if repeated:
                if field.type == field.TYPE_MESSAGE:
                    getattr(msg, field.name).add().CopyFrom(value)
                else:
                    getattr(msg, field.name).append(value)
            elif field.type == field.TYPE_MESSAGE:
                getattr(msg, field.name).CopyFrom(value)
            else:
                setattr(msg, field.name, value)


def _value(rng: random.Random, field: descriptor.FieldDescriptor, msg: message.Message, real: Real, depth: int) -> Any:
    name = field.name
    if field.type == field.TYPE_MESSAGE:
        if depth >= 3:
            return None
        sub = _message_class(field.message_type)()
        if field.message_type.full_name == "google.protobuf.Duration":
            sub.seconds = rng.choice([0, 1, -1, 59, 10**6, 315576000000, 2**63 - 1, -(2**63)])
            sub.nanos = rng.choice([0, 1, -1, 999999999, 10**9, -(10**9), 2**31 - 1])
        elif field.message_type.full_name == "google.protobuf.Timestamp":
            sub.seconds = rng.choice([0, -1, 253402300800, 2**63 - 1, -(2**63)])
            sub.nanos = rng.choice([0, -1, 10**9])
        else:
            fill(rng, sub, real, depth + 1)
        return sub
    if field.type == field.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return rng.choice([*values, -1, 2**31 - 1, -(2**31), 99])
    if field.type == field.TYPE_BOOL:
        return rng.random() < 0.5
    if field.type == field.TYPE_BYTES:
        size = rng.choice([0, 1, 100, 4096, 65536, 1 << 20, 10 * (1 << 20) + 1])
        size = size if _big(size) else 100
        return rng.randbytes(min(size, 4096)) * max(1, size // 4096)
    if field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, float("inf"), float("nan"), 1e308])
    if field.type != field.TYPE_STRING:
        return integer(rng, field)
    msg_name = msg.DESCRIPTOR.name
    if name in ("name", "sandbox"):
        if msg_name in ("AttachExecutionRequest", "GetExecutionRequest", "CancelExecutionRequest"):
            return execution_name(rng, real)
        if msg_name.endswith("Request"):
            return sandbox_name(rng, real)
    if name == "parent":
        return rng.choice(["providers/docker", "providers/docker", "providers/e2b", "providers/", "providers", ""])
    if name == "provider":
        return rng.choice(["docker", "docker", "docker", "", "e2b", "Docker", "nope", "providers/docker", "-x"])
    if name in ("path", "working_dir", "source", "target", "directory"):
        return path(rng)
    if name == "argv":
        return rng.choice(PROGRAMS) if rng.random() < 0.3 else text(rng)
    if name == "page_token":
        return rng.choice(
            [
                base64.urlsafe_b64encode(rng.randbytes(rng.randrange(1, 40))).decode(),
                base64.urlsafe_b64encode(native_id(rng, real).encode(errors="ignore")).decode(),
                "====",
                "!!",
                text(rng),
            ]
        )
    if name in ("url", "repository_url"):
        return rng.choice(
            [
                "http://127.0.0.1:1/x.git",
                "file:///etc",
                "ext::sh -c id",
                "-uhttp://x",
                "ssh://-oProxyCommand=id/x",
                "https://user:pass@127.0.0.1:1/x",
                "http://[::1",
                text(rng),
            ]
        )
    return text(rng)


def _message_class(desc: descriptor.Descriptor) -> type[message.Message]:
    from google.protobuf import message_factory

    cls: type[message.Message] = message_factory.GetMessageClass(desc)
    return cls


def poison(rng: random.Random, request: message.Message) -> None:
    """One field that validation refuses before any side effect, so the request creates nothing."""
    choice = rng.randrange(6)
    if choice == 0:
        request.request_id = rng.choice(["-x", "a/b", "a" * 129, "é", " "])  # type: ignore[attr-defined]
    elif choice == 1:
        request.labels["Bad Key"] = "x"  # type: ignore[attr-defined]
    elif choice == 2:
        request.spec.image = rng.choice([" bad", "-x", "a b", "--help"])  # type: ignore[attr-defined]
    elif choice == 3:
        request.spec.milli_cpus = -rng.randrange(1, 2**62)  # type: ignore[attr-defined]
    elif choice == 4:
        request.spec.ttl.seconds = -1  # type: ignore[attr-defined]
    else:
        request.provider = rng.choice(["nope", "", "-x", "Docker"])  # type: ignore[attr-defined]


def shape(rng: random.Random, method: str, request: message.Message, real: Real) -> None:
    """The constraints that keep a request harmless, applied after the random fill."""
    if method in ("CreateSandbox", "RunTask"):
        poison(rng, request)
    elif method == "RunTasks":
        tasks = request.tasks  # type: ignore[attr-defined]
        if len(tasks) > 50 and rng.random() < 0.9:
            del tasks[50:]
        for task in tasks:
            poison(rng, task)
    elif method == "DeleteSandbox":
        # Never the fuzzer's own sandbox by its exact name (the run needs it). Its prefixes and engine-style hex
        # ids go out as they come: they name nothing (exact ids only), so they must delete nothing, which the
        # check that both real sandboxes survive proves.
        if request.name == real.own:  # type: ignore[attr-defined]
            request.name = real.other  # type: ignore[attr-defined]
    elif method == "ExecuteAgent":
        # No agent from the catalog: it would install a CLI or run the instruction.
        request.agent = "fuzz-" + request.agent  # type: ignore[attr-defined]
    elif method == "WriteFile":
        if not request.path.startswith("/tmp/") and rng.random() < 0.5:  # type: ignore[attr-defined]
            request.path = "/tmp/fuzz/" + request.path  # type: ignore[attr-defined]
        if request.path.startswith("/") and not request.path.startswith("/tmp/"):  # type: ignore[attr-defined]
            request.path = "relative/" + request.path  # type: ignore[attr-defined]  # refused: not absolute
    elif method == "RunCommand":
        argv = request.argv  # type: ignore[attr-defined]
        if argv and argv[0] not in PROGRAMS and rng.random() < 0.5:
            argv[0] = rng.choice(PROGRAMS)
        if argv and argv[0] in PROGRAMS and rng.random() < 0.5:
            del argv[1:]


def mutate(rng: random.Random, body: bytes, creating: bool) -> bytes:
    """Raw bodies: random bytes, or a valid body truncated, bit-flipped, extended or with invalid UTF-8. A body
    that could create a sandbox is only replaced or made unparseable: a flipped bit or a cut could undo its
    poison."""
    kind = rng.choice([0, 4]) if creating else rng.randrange(6)
    if kind == 0 or not body:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == 1:
        return body[: rng.randrange(len(body))]
    if kind == 2:
        flipped = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if kind == 3:
        return body + rng.randbytes(rng.randrange(1, 16))
    if kind == 4:
        return b"\x0a\x02\xff\xfe" + body  # field 1 as a string holding invalid UTF-8
    # Unknown fields of every wire type, a huge declared length, deep group nesting.
    return rng.choice([b"\xf8\xff\xff\xff\x0f\x01", b"\x0a\xff\xff\xff\xff\x0f", b"\x0b" * 200, b"\x7a\x00"]) + body


# ---- the run --------------------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    method: descriptor.MethodDescriptor
    target: Target
    body: bytes
    metadata: tuple[tuple[str, str], ...]
    raw: bool

    def about(self) -> str:
        """The request as text, for a failure report (computed only then: text of a big request is slow)."""
        if self.raw:
            return f"raw body {self.body[:100]!r}{'...' if len(self.body) > 100 else ''}"
        text_form = str(_message_class(self.method.input_type).FromString(self.body))
        return text_form if len(text_form) < 400 else text_form[:400] + "..."


def cases(rng: random.Random, targets: list[Target], real: Real) -> Iterator[Case]:
    """REQUESTS_PER_RPC requests per RPC, shared by the targets, interleaved (so a slow RPC does not come
    last)."""
    methods = list(SERVICE.methods)
    index = 0
    for _ in range(-(-REQUESTS_PER_RPC // len(targets))):
        for method in methods:
            for target in targets:
                request = _message_class(method.input_type)()
                _budget[0] = BIG_BUDGET if rng.randrange(BIG_EVERY) == 0 else SMALL_BUDGET
                fill(rng, request, real)
                shape(rng, method.name, request, real)
                body = request.SerializeToString()
                raw = rng.random() < 0.12
                if raw:
                    body = mutate(rng, body, method.name in CREATING)
                metadata = target.metadata
                if rng.random() < 0.03:
                    metadata = rng.choice(target.other_metadata)
                yield Case(index, method, target, body, metadata, raw)
                index += 1


async def call(case: Case, channels: dict[str, list[grpc.aio.Channel]]) -> tuple[grpc.StatusCode, str, Any]:
    replicas = channels[case.target.name]
    channel = replicas[case.index % len(replicas)]
    path = f"/{SERVICE.full_name}/{case.method.name}"
    try:
        if case.method.server_streaming:
            stream = channel.unary_stream(path)(case.body, metadata=case.metadata, timeout=DEADLINE_SECONDS)
            async for _ in stream:
                pass
        else:
            await channel.unary_unary(path)(case.body, metadata=case.metadata, timeout=DEADLINE_SECONDS)
    except grpc.aio.AioRpcError as err:
        try:
            info = error_info(err)
        except ValueError:  # details that do not match the status (a status the client could not read whole)
            info = None
        return err.code(), err.details() or "", info
    return grpc.StatusCode.OK, "", None


def problems(code: grpc.StatusCode, details: str, info: Any, secrets: list[str]) -> list[str]:
    found = []
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        found.append(f"status {code.name}")
    if LEAK.search(details):
        found.append(f"implementation detail in the message: {LEAK.search(details)[0]!r}")  # type: ignore[index]
    if any(secret in details for secret in secrets):
        found.append("a credential in the message")
    if "metadata size exceeds" in details:
        found.append("a status too large for the client to read (the trailers are capped)")
    if code in EXPLAINED and info is None:
        found.append(f"{code.name} without an ErrorInfo reason")
    return found


@pytest.fixture
async def real(docker_stack: LocalStack) -> AsyncIterator[Real]:
    """The fuzzer's own sandbox with one finished execution, and another tenant's sandbox."""
    own = Client(docker_stack.address, docker_stack.client_token)
    other = Client(docker_stack.address, OTHER_TENANT_TOKEN)
    mine = (await own.create(spec=pb.SandboxSpec(network_mode="none"))).name
    theirs = ""
    try:
        theirs = (await other.create(spec=pb.SandboxSpec(network_mode="none"))).name
        execution = (await own.run(mine, ["echo", "fuzz"])).name
        yield Real(own=mine, execution=execution, other=theirs)
        # The fuzz touched neither sandbox's existence.
        assert (await own.get(mine)).name == mine
        assert (await other.get(theirs)).name == theirs
    finally:
        await own.delete(mine)
        if theirs:
            await other.delete(theirs)
        await own.close()
        await other.close()


async def test_fuzz_every_rpc(docker_stack: LocalStack, real: Real) -> None:
    tenant = (("x-sandbox-tenant", "local"),)
    provider_auth = (("authorization", f"Bearer {docker_stack.provider_token}"),)
    client_auth = (("authorization", f"Bearer {docker_stack.client_token}"),)
    # Not "other-tenant": with the provider's token that is the other tenant calling, legitimately.
    hostile = ["", "-x", "a" * 64, "../local", "local ", "LOCAL", "local,other"]
    hostile_tenants = [("x-sandbox-tenant", t) for t in hostile]
    targets = [
        Target(
            "orchestrator",
            [process.address for process in docker_stack.orchestrator_processes],
            client_auth,
            [(), (("authorization", "Bearer wrong-token-0123456789"),), (("authorization", "Basic x"),)],
        ),
        Target(
            "provider",
            [process.address for process in docker_stack.provider_processes],
            provider_auth + tenant,
            [(), tenant, (("authorization", f"Bearer {docker_stack.client_token}"), *tenant)]
            + [(*provider_auth, t) for t in hostile_tenants],
        ),
    ]
    secrets = [docker_stack.client_token, docker_stack.provider_token, OTHER_TENANT_TOKEN]
    rng = random.Random(SEED)
    options = [("grpc.max_receive_message_length", 32 << 20), ("grpc.max_send_message_length", 32 << 20)]
    channels = {t.name: [grpc.aio.insecure_channel(a, options=options) for a in t.addresses] for t in targets}
    pending = cases(rng, targets, real)
    failures: list[str] = []
    outcomes: Counter[tuple[str, str]] = Counter()

    seconds: Counter[str] = Counter()
    samples: dict[tuple[str, str], str] = {}

    async def worker() -> None:
        for case in pending:  # one shared iterator: each case is taken by one worker
            began = time.monotonic()
            code, details, info = await call(case, channels)
            seconds[case.method.name] += time.monotonic() - began
            outcomes[(case.method.name, code.name)] += 1
            if code in TRANSIENT and (case.method.name, code.name) not in samples:
                samples[(case.method.name, code.name)] = f"{details[:200]!r} on the {case.target.name}"
            for problem in problems(code, details, info, secrets):
                failures.append(
                    f"#{case.index} {case.method.name} on the {case.target.name}: {problem}: "
                    f"{code.name} {details[:300]!r}\n    request: {case.about()}"
                )

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    finally:
        for replicas in channels.values():
            for channel in replicas:
                await channel.close()
    elapsed = time.monotonic() - started
    total = sum(outcomes.values())
    per_rpc = Counter(method for method, _ in outcomes.elements())
    print(f"fuzz: seed {SEED}, {total} requests in {elapsed:.1f} s; outcomes: {sorted(outcomes.items())}")
    print("first answer of each transient kind:", samples)
    print("seconds per RPC (summed over requests):", {m: round(t, 1) for m, t in seconds.most_common()})
    assert min(per_rpc.values()) >= REQUESTS_PER_RPC
    assert set(per_rpc) == {m.name for m in SERVICE.methods}
    assert not failures, (
        f"seed {SEED} (rerun with SANDBOX_FUZZ_SEED={SEED}): {len(failures)} bad answers, the first ones:\n"
        + "\n".join(failures[:25])
    )
