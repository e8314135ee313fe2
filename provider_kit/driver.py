"""The small interface a provider implements; everything else is written once in the kit."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from provider_kit.streams import closing
from provider_kit.workspace import Setup
from sandbox.v1 import sandbox_pb2


@dataclass(frozen=True)
class NewSandbox:
    """A validated CreateSandbox request, with the provider's defaults applied."""

    tenant: str
    request_id: str
    # Fingerprint of the request, to tell a retry (same) from a conflicting reuse of request_id.
    request_hash: str
    spec: sandbox_pb2.SandboxSpec
    labels: dict[str, str]
    create_time: datetime
    expire_time: datetime
    # Small kit-level facts to keep with the sandbox (such as its workspace); drivers store them verbatim.
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxRecord:
    """What a provider knows about one sandbox, read back from the provider's own resource."""

    native_id: str
    tenant: str
    request_id: str
    request_hash: str
    spec: sandbox_pb2.SandboxSpec
    labels: dict[str, str]
    state: sandbox_pb2.Sandbox.State.ValueType
    create_time: datetime
    expire_time: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    #: Where each of spec.ports is reachable, as the provider reports it now.
    endpoints: list[sandbox_pb2.Endpoint] = field(default_factory=list)


@dataclass(frozen=True)
class Output:
    """Bytes a process wrote; fd is 1 for stdout, 2 for stderr."""

    fd: int
    data: bytes


@dataclass(frozen=True)
class Exit:
    """The process ended with this exit code; always the last item of a process stream."""

    code: int


@dataclass(frozen=True)
class ProcessResult:
    code: int
    stdout: bytes
    stderr: bytes


class Driver(abc.ABC):
    """A sandbox provider, reduced to what differs between providers.

    Errors are raised as provider_kit.errors.ApiError; anything else reaches the client as INTERNAL.
    """

    #: The provider's name in resource names, such as "docker".
    name: str

    def apply_defaults(self, spec: sandbox_pb2.SandboxSpec, tenant: str) -> sandbox_pb2.SandboxSpec:
        """Fills unset fields with the operator's defaults and rejects values beyond the operator's limits,
        some of which the operator sets per tenant (such as who may have host networking)."""
        return spec

    @abc.abstractmethod
    async def create(self, new: NewSandbox) -> SandboxRecord:
        """Creates a running sandbox. If new.request_id is set and a sandbox of the same tenant was already
        created with it, returns that one instead (the kit compares request hashes)."""

    @abc.abstractmethod
    async def get(self, native_id: str, *, endpoints: bool = True) -> SandboxRecord:
        """Reads one sandbox; raises NOT_FOUND if it does not exist or is not managed by this platform.
        endpoints=False: the caller does not need record.endpoints, so a driver for which they cost calls of
        their own (Daytona's preview links) may leave them out."""

    @abc.abstractmethod
    async def list_sandboxes(self, tenant: str, labels: dict[str, str], after: str, limit: int) -> list[SandboxRecord]:
        """Up to limit sandboxes of tenant carrying all labels, with native_id > after, ordered by native_id."""

    @abc.abstractmethod
    async def delete(self, native_id: str) -> None:
        """Deletes the sandbox and all its processes; succeeds if it is already gone."""

    @abc.abstractmethod
    def stream(
        self, native_id: str, argv: list[str], env: dict[str, str] | None = None
    ) -> AsyncIterator[Output | Exit]:
        """Runs argv in the sandbox with env added to its environment (never logged or persisted: it may
        hold secrets), yielding its output as it comes, then its Exit.

        Closing the iterator early must release the connection. Backpressure: do not read ahead much
        further than the consumer.
        """

    async def upload(self, native_id: str, path: str, content: bytes) -> None:
        """Writes content to a new file at path, directly under /tmp, with the provider's own file API
        (commands cannot carry megabytes in their arguments, which hold at most 128 KiB each). The kit moves
        the file into place afterwards (provider_kit/files.py), so owner, mode, parent directories and
        atomicity are not the driver's concern. Needed unless accepts_stdin is set."""
        raise NotImplementedError

    #: Whether run_with_stdin is implemented: WriteFile then streams the bytes straight into the command that
    #: places the file, one round trip instead of upload plus a command.
    accepts_stdin: bool = False

    async def run_with_stdin(self, native_id: str, argv: list[str], stdin: bytes) -> ProcessResult:
        """Runs argv to completion with stdin as its standard input (then end of file); returns its output.
        The command may exit without reading all of it. Called only when accepts_stdin is set."""
        raise NotImplementedError

    async def run(self, native_id: str, argv: list[str], env: dict[str, str] | None = None) -> ProcessResult:
        """Runs argv to completion and returns its output."""
        out, err = bytearray(), bytearray()
        # Closed explicitly, so the provider's connection is released as soon as the Exit arrives.
        async with closing(self.stream(native_id, argv, env)) as process:
            async for item in process:
                if isinstance(item, Exit):
                    return ProcessResult(item.code, bytes(out), bytes(err))
                (out if item.fd == 1 else err).extend(item.data)
        raise RuntimeError("process stream ended without an exit status")

    @abc.abstractmethod
    async def ready(self) -> bool:
        """Whether the provider's backend answers; drives the named health service."""

    async def reap_expired(self, now: datetime) -> int:
        """Deletes sandboxes of this platform whose expiry has passed; returns how many."""
        return 0

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Releases clients and connections."""

    #: Whether the provider's own git API clones (clone_workspace). The kit's setup script then only prepares
    #: the checkout it finds. Commits and pushes are always the kit's (provider_kit/git_push.py): a native
    #: push would hand the token to a daemon that reads the checkout's own git config.
    native_git: bool = False

    async def clone_workspace(self, native_id: str, setup: Setup, directory: str) -> None:
        """Clones setup.url into directory with the provider's own git API (the base ref, or the remote's
        default branch; setup.depth commits when it is positive), then creates and checks out setup.branch,
        the token given for these calls only (never stored). An empty repository is left without a branch
        (the setup script starts it). Called only when native_git is set; raises
        failed_precondition("CLONE_FAILED", ...) with git's reason when the remote refuses."""
        raise NotImplementedError
