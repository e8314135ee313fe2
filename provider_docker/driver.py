"""The Docker driver: sandboxes are containers on a Docker engine, driven with docker-py.

docker-py is synchronous, so engine calls run on a thread pool and each process stream gets a thread of
its own (streams can last as long as an agent run). Everything the platform needs to know about a sandbox
is kept in the container's labels, so any replica can serve any sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import logging
import posixpath
import re
import socket
import tarfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import docker
import docker.errors
import docker.utils
import grpc
from docker.utils.socket import frames_iter

from provider_docker.errors import map_docker_error
from provider_docker.settings import DockerSettings
from provider_kit import records
from provider_kit.driver import Driver, Exit, NewSandbox, Output, ProcessResult, SandboxRecord
from provider_kit.errors import ApiError, failed_precondition, invalid_argument, not_found
from sandbox.v1 import sandbox_pb2

T = TypeVar("T")
log = logging.getLogger(__name__)
# How many output chunks a stream's reader thread may get ahead of the gRPC consumer.
STREAM_BUFFER_CHUNKS = 64
RESERVED_NAME_ATTEMPTS = 50
# The API version used until the engine's own is known (Docker 20.10 and newer speak it).
FALLBACK_API_VERSION = "1.41"
# The only native ids this driver ever makes (see _container_name). The engine resolves a container id
# prefix as readily as a name, so nothing else is ever passed to it: "sbx-" is not hex, so such a name can
# never be read as somebody else's id prefix.
NATIVE_ID = re.compile(r"sbx-[0-9a-f]{20}")
# The only capabilities a sandbox keeps (Docker's default set also has NET_RAW, MKNOD, SETFCAP, SETPCAP,
# FSETID, NET_BIND_SERVICE, SYS_CHROOT and AUDIT_WRITE). Commands and the platform's scripts run as root and:
#   SETUID, SETGID    switch to the agent user (runuser)
#   CHOWN             give the checkout to the agent user
#   DAC_OVERRIDE      read and write in directories the agent user owns (the checkout, its home)
#   FOWNER            chmod and set times on files the agent user owns (git, file writes)
#   KILL              signal the agent user's processes (cancel, timeout, the end of an execution)
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"]
# Sandboxes in bridge mode join a network of the platform's where containers cannot reach each other.
ICC_OPTION = "com.docker.network.bridge.enable_icc"
ISOLATED_BRIDGE_OPTIONS = {ICC_OPTION: "false"}
# Sums the sizes of deleted files still open in the sandbox (each counted once per open descriptor: an
# overcount only pauses a sandbox sooner). Memory-backed files (memfd, /dev/shm) are memory, not disk. Root
# without CAP_SYS_PTRACE cannot look into the agent's descriptors, so the count runs as root and again as the
# agent user; what the agent's count answers is checked to be a number.
_COUNT_DELETED_BUT_OPEN = r"""
t=0
for f in /proc/[0-9]*/fd/*; do
  l=$(readlink "$f" 2>/dev/null) || continue
  case $l in /memfd:*|/dev/shm/*) continue;; /*" (deleted)") ;; *) continue;; esac
  n=$(stat -L -c %s "$f" 2>/dev/null) && t=$((t + n))
done
echo "$t"
"""
DELETED_BUT_OPEN = r"""
a=$(sh -c "$1") b=0
if id agent >/dev/null 2>&1; then b=$(runuser -u agent -- sh -c "$1" 2>/dev/null) || b=0; fi
case $a in ''|*[!0-9]*) a=0;; esac
case $b in ''|*[!0-9]*) b=0;; esac
echo $((a + b))
"""
DISK_PROBE_SECONDS = 10.0
# How the engine refuses storage_opt where its storage cannot limit a container's size.
STORAGE_OPT_UNSUPPORTED = "--storage-opt is supported only"


class DockerDriver(Driver):
    name = "docker"

    def __init__(self, settings: DockerSettings, client: docker.APIClient | None = None) -> None:
        self._settings = settings
        self._api = client or docker.APIClient(
            # "auto" would need the engine up just to construct the client: start from a configured version
            # and negotiate once the engine answers (see ready()).
            version=FALLBACK_API_VERSION if settings.docker_api_version == "auto" else settings.docker_api_version,
            timeout=120,
            max_pool_size=64,
            **docker.utils.kwargs_from_env(),
        )
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="docker")
        # Ending stdin half-closes the exec's connection, which TLS (an engine at https://) cannot do: an
        # SSLSocket drops TLS on shutdown. Such engines get WriteFile's bytes through the archive API instead.
        self.accepts_stdin = not str(self._api.base_url).startswith("https://")
        self._negotiated = settings.docker_api_version != "auto"
        # Whether the engine limits a container's writable layer (storage_opt size): None until its first answer.
        self.storage_opt_supported: bool | None = None
        self._bridge_checked = False
        self._disk_watch: asyncio.Task[None] | None = None
        # This replica's open process streams by sandbox, each with how to end it with an error (a frozen
        # sandbox never ends them itself). Only to release this replica's own connections.
        self._streams: dict[str, dict[str, Callable[[ApiError], None]]] = {}

    def _negotiate(self) -> None:
        """Adopts the engine's API version the first time it answers (newer engines refuse old versions)."""
        if not self._negotiated:
            # docker-py has no public setter for the version it puts in every URL.
            self._api._version = self._api.version(api_version=False)["ApiVersion"]  # type: ignore[attr-defined]
            self._negotiated = True

    async def _call(self, subject: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()

        def call() -> T:
            self._negotiate()
            return fn(*args, **kwargs)

        try:
            return await loop.run_in_executor(self._pool, call)
        except Exception as exc:
            if isinstance(exc, docker.errors.APIError) and exc.status_code == 409 and "paused" in str(exc.explanation):
                # Only the disk watch pauses sandboxes (see enforce_disk_limit).
                raise self._over_disk_limit(subject) from exc
            mapped = map_docker_error(exc, subject)
            if mapped is None:
                raise
            raise mapped from exc

    def apply_defaults(self, spec: sandbox_pb2.SandboxSpec, tenant: str) -> sandbox_pb2.SandboxSpec:
        s = self._settings
        modes = s.network_modes_for(tenant)
        out = sandbox_pb2.SandboxSpec()
        out.CopyFrom(spec)
        out.image = spec.image or s.docker_default_image
        out.milli_cpus = spec.milli_cpus or s.docker_default_milli_cpus
        out.memory_bytes = spec.memory_bytes or s.docker_default_memory_mb * 2**20
        out.pids_limit = spec.pids_limit or s.docker_default_pids_limit
        out.network_mode = spec.network_mode or (modes[0] if modes else "")
        limits = [
            ("spec.milli_cpus", out.milli_cpus, s.docker_max_milli_cpus),
            ("spec.memory_bytes", out.memory_bytes, s.docker_max_memory_mb * 2**20),
            ("spec.pids_limit", out.pids_limit, s.docker_max_pids_limit),
        ]
        for field, value, maximum in limits:
            if value > maximum:
                raise invalid_argument("LIMIT_EXCEEDED", f"{field} must be at most {maximum}", field=field)
        if out.network_mode not in modes:
            # Host networking is granted per tenant by the operator: say so, or a client would think it a typo.
            granted = " (host networking is granted per tenant with SANDBOX_DOCKER_HOST_NETWORK_TENANTS)"
            raise invalid_argument(
                "NETWORK_MODE_NOT_ALLOWED",
                (
                    f"spec.network_mode must be one of {', '.join(modes)} for this tenant"
                    if modes
                    else "no network mode is allowed for this tenant (SANDBOX_DOCKER_NETWORK_MODES)"
                )
                + (granted if out.network_mode == "host" else ""),
                field="spec.network_mode",
            )
        if out.ports and out.network_mode == "none":
            raise invalid_argument(
                "PORTS_NEED_A_NETWORK", "spec.ports cannot be reached with network_mode none", field="spec.ports"
            )
        for mount in out.mounts:
            if mount.source not in s.allowed_mounts:
                raise invalid_argument(
                    "MOUNT_NOT_ALLOWED",
                    f"spec.mounts source {mount.source!r} is not among the paths the operator allows",
                    field="spec.mounts",
                )
        return out

    def _container_name(self, new: NewSandbox) -> str:
        if new.request_id:
            # Deterministic, so the engine's unique names make concurrent retries create one container.
            digest = hashlib.sha256(f"{new.tenant}\0{new.request_id}".encode()).hexdigest()
            return f"sbx-{digest[:20]}"
        return f"sbx-{uuid.uuid4().hex[:20]}"

    def _record(self, name: str, labels: dict[str, str], state: str, published: dict[int, int]) -> SandboxRecord:
        """published: the engine's host port for each container port (bridge mode)."""
        states = {"running": sandbox_pb2.Sandbox.STATE_RUNNING, "created": sandbox_pb2.Sandbox.STATE_STARTING}
        record = records.decode(name.lstrip("/"), labels, states.get(state, sandbox_pb2.Sandbox.STATE_STOPPED))
        host = self._settings.endpoint_host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 address in a URL
        if record.spec.network_mode == "host":
            published = {port: port for port in record.spec.ports}
        endpoints = [
            sandbox_pb2.Endpoint(port=port, url=f"http://{host}:{published[port]}")
            for port in record.spec.ports
            if port in published
        ]
        return dataclasses.replace(record, endpoints=endpoints)

    async def create(self, new: NewSandbox) -> SandboxRecord:
        name = self._container_name(new)
        spec = new.spec
        subject = f"sandbox {name}"
        labels = records.encode(new, self._settings.docker_owner)
        try:
            await self._create_container(name, labels, spec)
        except Exception as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, docker.errors.ImageNotFound | docker.errors.NotFound):
                raise failed_precondition(
                    "IMAGE_NOT_FOUND", f"image {spec.image!r} is not available on this Docker engine"
                ) from exc
            if not (isinstance(cause, docker.errors.APIError) and cause.status_code == 409 and new.request_id):
                raise
            # The same request_id was used before: hand back that sandbox (the kit compares request hashes).
            existing = await self._get_reserved(name)
            if existing.state == sandbox_pb2.Sandbox.STATE_STARTING:
                await self._call(subject, self._api.start, name)
                existing = await self.get(name)
            return existing
        try:
            await self._call(subject, self._api.start, name)
            if spec.ports and spec.network_mode != "host":
                return await self.get(name)  # the engine picked the published ports
        except BaseException:
            # Never leave a created-but-unusable container behind.
            with contextlib.suppress(Exception):
                await self._call(subject, self._api.remove_container, name, force=True, v=True)
            raise
        return self._record(name, labels, "running", {})

    @staticmethod
    def _checked(native_id: str) -> str:
        """native_id, if it is one this driver made; anything else does not exist (same answer as a missing
        sandbox, so nothing is learnt from it)."""
        if not NATIVE_ID.fullmatch(native_id):
            raise not_found("SANDBOX_NOT_FOUND", f"sandbox {native_id} does not exist")
        return native_id

    async def _bridge_network(self) -> str:
        """The network `bridge` sandboxes join: a bridge of the platform's with inter-container traffic off, so
        no sandbox reaches another (Docker's default bridge lets every container reach every other one, any
        tenant's). Made on first use, by whichever replica comes first."""
        name = self._settings.docker_bridge_network
        if self._bridge_checked:
            return name
        found = [n for n in await self._call("network", self._api.networks, names=[name]) if n["Name"] == name]
        if not found:
            try:
                await self._call(
                    "network",
                    self._api.create_network,
                    name,
                    driver="bridge",
                    options=ISOLATED_BRIDGE_OPTIONS,
                    labels={records.OWNER_KEY: self._settings.docker_owner},
                    check_duplicate=True,
                )
            except ApiError as err:  # another replica made it meanwhile
                cause = err.__cause__
                if not (isinstance(cause, docker.errors.APIError) and cause.status_code == 409):
                    raise
        else:
            options = (await self._call("network", self._api.inspect_network, found[0]["Id"]))["Options"] or {}
            if options.get(ICC_OPTION) != "false":
                raise failed_precondition(
                    "NETWORK_NOT_ISOLATED",
                    f"the Docker network {name!r} lets containers reach each other: recreate it with "
                    f"{ICC_OPTION}=false or name another with SANDBOX_DOCKER_BRIDGE_NETWORK",
                )
        self._bridge_checked = True
        return name

    async def _create_container(self, name: str, labels: dict[str, str], spec: sandbox_pb2.SandboxSpec) -> None:
        network_mode = await self._bridge_network() if spec.network_mode == "bridge" else spec.network_mode

        def host_config(limit_disk: bool) -> dict[str, Any]:
            config: dict[str, Any] = self._api.create_host_config(
                init=True,  # reaps the detached processes of executions
                nano_cpus=spec.milli_cpus * 1_000_000,
                mem_limit=spec.memory_bytes,
                pids_limit=spec.pids_limit,
                network_mode=network_mode,
                cap_drop=["ALL"],
                cap_add=CAPABILITIES,
                # No setuid binary or file capability gives a process more than its parent had.
                security_opt=["no-new-privileges"],
                storage_opt={"size": f"{self._settings.docker_disk_limit_mb}M"} if limit_disk else None,
                binds={m.source: {"bind": m.target, "mode": "ro"} for m in spec.mounts},
                # Each port on an ephemeral port of the engine host (bridge mode; host mode shares the host's
                # ports).
                port_bindings={port: (self._settings.docker_publish_ip,) for port in spec.ports}
                if spec.network_mode != "host"
                else None,
            )
            return config

        async def create(limit_disk: bool) -> None:
            await self._call(
                f"sandbox {name}",
                self._api.create_container,
                image=spec.image,
                name=name,
                labels=labels,
                host_config=host_config(limit_disk),
                ports=list(spec.ports) or None,
                entrypoint=["sleep", "infinity"],
                command=[],
                environment=dict(spec.env),
                detach=True,
            )

        if self.storage_opt_supported is False:
            await create(limit_disk=False)
            return
        try:
            await create(limit_disk=True)
        except ApiError as err:
            cause = err.__cause__
            if not (isinstance(cause, docker.errors.APIError) and STORAGE_OPT_UNSUPPORTED in str(cause.explanation)):
                raise
            # This engine's storage cannot limit a container's size (overlay2 anywhere but on xfs with pquota): the disk
            # watch enforces the limit instead (see enforce_disk_limit). Asked once per replica.
            log.warning("the Docker engine cannot limit a container's disk; measuring sandboxes instead")
            self.storage_opt_supported = False
            await create(limit_disk=False)
            return
        self.storage_opt_supported = True

    async def _get_reserved(self, name: str) -> SandboxRecord:
        """Reads a container whose name another request has reserved. The engine reserves the name before
        the container can be inspected, so a concurrent create may briefly see NOT_FOUND."""
        for _ in range(RESERVED_NAME_ATTEMPTS):
            try:
                return await self.get(name)
            except ApiError as err:
                if err.code != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.1)
        return await self.get(name)

    async def get(self, native_id: str, *, endpoints: bool = True) -> SandboxRecord:
        attrs = await self._call(f"sandbox {native_id}", self._api.inspect_container, self._checked(native_id))
        labels = attrs["Config"].get("Labels") or {}
        # The exact name, not a container the engine found some other way, and one this deployment made.
        if attrs["Name"].lstrip("/") != native_id or labels.get(records.OWNER_KEY) != self._settings.docker_owner:
            raise not_found("SANDBOX_NOT_FOUND", f"sandbox {native_id} does not exist")
        bindings = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
        published = {int(key.split("/")[0]): int(hosts[0]["HostPort"]) for key, hosts in bindings.items() if hosts}
        return self._record(attrs["Name"], labels, attrs["State"]["Status"], published)

    async def _managed(self, *filters: str) -> list[dict[str, Any]]:
        labels = [f"{records.OWNER_KEY}={self._settings.docker_owner}", *filters]
        return await self._call("sandboxes", self._api.containers, all=True, filters={"label": labels})

    async def list_sandboxes(self, tenant: str, labels: dict[str, str], after: str, limit: int) -> list[SandboxRecord]:
        filters = [f"{records.TENANT_KEY}={tenant}", *(f"{records.USER_LABEL}{k}={v}" for k, v in labels.items())]
        found = [
            self._record(
                c["Names"][0],
                c["Labels"],
                c["State"],
                {p["PrivatePort"]: p["PublicPort"] for p in c.get("Ports") or [] if "PublicPort" in p},
            )
            for c in await self._managed(*filters)
        ]
        found.sort(key=lambda r: r.native_id)
        return [r for r in found if r.native_id > after][:limit]

    async def delete(self, native_id: str) -> None:
        if not NATIVE_ID.fullmatch(native_id):
            return  # never made by this driver: nothing to delete
        try:
            await self._call(
                f"sandbox {native_id}", self._api.remove_container, self._checked(native_id), force=True, v=True
            )
        except Exception as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                raise

    async def reap_expired(self, now: datetime) -> int:
        # A container without an expiry was not made by a provider (never guess: leave it alone).
        expired = [
            c["Names"][0].lstrip("/")
            for c in await self._managed()
            if c["Labels"].get(records.EXPIRE_KEY) and records.from_epoch(c["Labels"][records.EXPIRE_KEY]) <= now
        ]
        for name in expired:
            await self.delete(name)
        return len(expired)

    def _over_disk_limit(self, subject: str) -> ApiError:
        return failed_precondition(
            "DISK_QUOTA_EXCEEDED",
            f"{subject} was frozen: its files grew past the disk limit of {self._settings.docker_disk_limit_mb} MiB; "
            "delete it",
        )

    async def enforce_disk_limit(self) -> list[str]:
        """Pauses every running sandbox whose writable layer holds more than the disk limit; returns their names.

        For engines whose storage cannot limit a container's size (storage_opt). Paused, a sandbox stops
        writing at once, and nothing inside it can undo that (the engine's freezer does it from outside): its
        commands fail with DISK_QUOTA_EXCEEDED and GetSandbox says STOPPED until the tenant deletes it or it
        expires. The engine measures each container's files (SizeRw), which costs a walk of its writable layer.
        """
        limit = self._settings.docker_disk_limit_mb * 2**20
        running = await self._call(
            "sandboxes",
            self._api.containers,
            size=True,
            filters={"label": [f"{records.OWNER_KEY}={self._settings.docker_owner}"], "status": "running"},
        )
        sizes = {c["Names"][0].lstrip("/"): c.get("SizeRw") or 0 for c in running}
        # A file deleted while a process keeps it open takes disk space that no walk of the layer sees: add what
        # each sandbox's processes hold that way (read from outside the agent's reach: root's /proc view).
        hidden = await asyncio.gather(*(self._deleted_but_open_bytes(name) for name in sizes))
        over = [name for (name, size), extra in zip(sizes.items(), hidden, strict=True) if size + extra > limit]
        for name in over:
            try:
                await self._call(f"sandbox {name}", self._api.pause, name)
            except ApiError as err:  # gone or paused meanwhile, or by another replica
                if err.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                    raise
            log.warning("sandbox over its disk limit paused", extra={"sandbox": name, "limit_mb": limit >> 20})
        return over

    async def _deleted_but_open_bytes(self, name: str) -> int:
        """Bytes of deleted files that processes in the sandbox still hold open (0 when it cannot be read: the
        check then rests on the writable layer's size alone)."""
        try:
            result = await asyncio.wait_for(
                self.run(name, ["sh", "-c", DELETED_BUT_OPEN, "disk-probe", _COUNT_DELETED_BUT_OPEN]),
                DISK_PROBE_SECONDS,
            )
        except (ApiError, TimeoutError):
            return 0
        total = result.stdout.strip()
        return int(total) if result.code == 0 and total.isdigit() and len(total) < 20 else 0

    async def _end_frozen_streams(self) -> None:
        """Ends this replica's streams into frozen sandboxes (whichever replica froze them): their processes will
        not write or exit again, so the streams would otherwise wait until the sandbox is deleted."""
        if not self._streams:
            return
        for container in await self._managed():
            if container["State"] != "paused":
                continue
            name = container["Names"][0].lstrip("/")
            for end in list(self._streams.get(name, {}).values()):
                end(self._over_disk_limit(f"sandbox {name}"))

    async def _watch_disk(self) -> None:
        while True:
            if self.storage_opt_supported is not True:  # the engine does not limit sizes itself, or not known yet
                try:
                    await self.enforce_disk_limit()
                    await self._end_frozen_streams()
                except Exception:
                    log.exception("disk watch failed")
            await asyncio.sleep(self._settings.docker_disk_check_seconds)

    async def ready(self) -> bool:
        # The server asks for readiness from its start on, on its event loop: the disk watch starts with it.
        if self._disk_watch is None and self._settings.docker_disk_check_seconds > 0:
            self._disk_watch = asyncio.get_running_loop().create_task(self._watch_disk())
        try:
            return bool(await self._call("engine", self._api.ping))
        except Exception:
            return False

    async def close(self) -> None:
        if self._disk_watch is not None:
            self._disk_watch.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    async def upload(self, native_id: str, path: str, content: bytes) -> None:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            member = tarfile.TarInfo(posixpath.basename(path))
            member.size, member.mode = len(content), 0o600
            tar.addfile(member, io.BytesIO(content))
        await self._call(
            f"sandbox {native_id}",
            self._api.put_archive,
            self._checked(native_id),
            posixpath.dirname(path),
            archive.getvalue(),
        )

    async def run_with_stdin(self, native_id: str, argv: list[str], stdin: bytes) -> ProcessResult:
        def send(raw: socket.socket) -> None:
            # A command that exits early stops reading: the engine then closes the connection.
            with contextlib.suppress(OSError):
                raw.sendall(stdin)
                raw.shutdown(socket.SHUT_WR)  # end of file for the command

        def run() -> ProcessResult:
            exec_id = self._api.exec_create(self._checked(native_id), argv, stdin=True, stdout=True, stderr=True)["Id"]
            sock: Any = self._api.exec_start(exec_id, socket=True)
            raw: socket.socket = getattr(sock, "_sock", sock)
            # Sending and reading at once: a command that writes while it reads, or exits without reading
            # everything, must not leave either side waiting for the other.
            sender = threading.Thread(target=send, args=(raw,), name=f"stdin-{exec_id[:12]}", daemon=True)
            sender.start()
            out, err = bytearray(), bytearray()
            try:
                with contextlib.suppress(ConnectionResetError):
                    for fd, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
                        (out if fd == 1 else err).extend(data)
            finally:
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)  # unblocks a sender the engine no longer reads from
                sock.close()
                sender.join()
            code = self._api.exec_inspect(exec_id)["ExitCode"]
            return ProcessResult(code if code is not None else 255, bytes(out), bytes(err))

        return await self._call(f"sandbox {native_id}", run)

    async def stream(
        self, native_id: str, argv: list[str], env: dict[str, str] | None = None
    ) -> AsyncIterator[Output | Exit]:
        subject = f"sandbox {native_id}"
        created = await self._call(
            subject,
            self._api.exec_create,
            self._checked(native_id),
            argv,
            stdout=True,
            stderr=True,
            environment=env or None,
        )
        exec_id = created["Id"]
        sock: Any = await self._call(subject, self._api.exec_start, exec_id, socket=True)
        raw: socket.socket = getattr(sock, "_sock", sock)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Output | BaseException | None] = asyncio.Queue()
        slots = threading.Semaphore(STREAM_BUFFER_CHUNKS)
        stop = threading.Event()

        def deliver(item: Output | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                for fd, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
                    while not slots.acquire(timeout=0.5):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    deliver(Output(fd, data))
                deliver(None)
            except BaseException as exc:
                deliver(exc)

        def end(error: ApiError) -> None:
            stop.set()
            deliver(error)

        threading.Thread(target=pump, name=f"exec-{exec_id[:12]}", daemon=True).start()
        self._streams.setdefault(native_id, {})[exec_id] = end
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    mapped = map_docker_error(item, subject)
                    raise mapped or item
                slots.release()
                yield item
            code = (await self._call(subject, self._api.exec_inspect, exec_id))["ExitCode"]
            yield Exit(code if code is not None else 255)
        finally:
            streams = self._streams.get(native_id, {})
            streams.pop(exec_id, None)
            if not streams:
                self._streams.pop(native_id, None)
            stop.set()
            # Unblocks the reader thread and releases the connection. The process keeps running (the engine does
            # not end an exec whose stream closed): the kit stops an abandoned follower itself.
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
