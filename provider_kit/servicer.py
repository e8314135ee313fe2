"""The SandboxProvider servicer, written once for every provider over the Driver interface."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from provider_kit import exec_scripts, validation
from provider_kit.auth import provider_caller_tenant
from provider_kit.coding import Coding, workspace_of
from provider_kit.driver import Driver, NewSandbox, SandboxRecord
from provider_kit.errors import (
    ApiError,
    already_exists,
    failed_precondition,
    invalid_argument,
    stream_errors,
    unary_errors,
)
from provider_kit.executions import Executions, timestamp
from provider_kit.files import check_content, check_mode, read_file, write_file
from provider_kit.names import ExecutionName, SandboxName, parse_execution_name, parse_parent, parse_sandbox_name
from provider_kit.quotas import admit_sandbox
from provider_kit.sealed import Sealer
from provider_kit.settings import ProviderSettings
from provider_kit.tasks import Tasks
from provider_kit.telemetry import ACTIVE_SANDBOXES, SANDBOX_CREATE_SECONDS
from provider_kit.tenancy import OwnerCache, check_owner, sandbox_not_found, uniform_not_found
from provider_kit.workspace import WORKSPACE_METADATA_KEY, encode_workspace
from sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(provider: str, record: SandboxRecord) -> sandbox_pb2.Sandbox:
    name = SandboxName(provider, record.native_id)
    workspace = workspace_of(record)
    if workspace is not None:
        workspace.setup_execution = str(ExecutionName(name, workspace.setup_execution))
    return sandbox_pb2.Sandbox(
        name=str(name),
        workspace=workspace,
        provider=provider,
        spec=record.spec,
        state=record.state,
        labels=record.labels,
        create_time=timestamp(record.create_time),
        expire_time=timestamp(record.expire_time),
        request_id=record.request_id,
        endpoints=sorted(record.endpoints, key=lambda e: e.port),
    )


class ProviderServicer(sandbox_pb2_grpc.SandboxProviderServicer):
    def __init__(self, driver: Driver, settings: ProviderSettings) -> None:
        self._driver = driver
        self._settings = settings
        self._tokens = settings.accepted_provider_tokens()
        self._executions = Executions(driver, settings.stream_keepalive_seconds, settings.max_executions_per_sandbox)
        self._owners = OwnerCache()
        self._coding = Coding(driver, self._executions, settings)
        sealer = Sealer.from_settings(settings.accepted_state_keys())
        self._tasks = Tasks(driver, self._executions, self._coding, sealer)

    async def close(self) -> None:
        """After the drain: lets cleanups under way finish, then releases the driver."""
        await self._executions.close()
        await self._driver.close()

    def _tenant(self, context: Context) -> str:
        return provider_caller_tenant(context, self._tokens)

    def _check_provider(self, provider: str) -> None:
        if provider != self._driver.name:
            raise invalid_argument(
                "UNKNOWN_PROVIDER", f"this server serves provider {self._driver.name!r}, not {provider!r}"
            )

    async def _owned(self, name: SandboxName, tenant: str, *, endpoints: bool = False) -> SandboxRecord:
        """The sandbox if it exists and belongs to tenant; another tenant's sandbox is NOT_FOUND. Its endpoints
        only when asked: they may cost the provider calls of their own, and only GetSandbox shows them."""
        self._check_provider(name.provider)
        try:
            record = await self._driver.get(name.native_id, endpoints=endpoints)
        except ApiError as err:
            raise uniform_not_found(err, name) from None
        return check_owner(name, record, tenant)

    async def _check_running(self, name: SandboxName, tenant: str) -> None:
        """For process calls: the sandbox must be the caller's and running.

        A sandbox's tenant never changes, so a replica may remember it for a while (OwnerCache): that saves
        a provider round trip on every command. If the sandbox has since gone or stopped, the process call
        itself fails with NOT_FOUND or FAILED_PRECONDITION.
        """
        self._check_provider(name.provider)
        owner = self._owners.get(name.native_id)
        if owner is None:
            record = await self._owned(name, tenant)
            if record.state != sandbox_pb2.Sandbox.STATE_RUNNING:
                raise failed_precondition("SANDBOX_NOT_RUNNING", f"sandbox {name} is not running")
            self._owners.put(record)
            owner = record.tenant
        if owner != tenant:
            raise sandbox_not_found(name)

    @unary_errors
    async def CreateSandbox(self, request: sandbox_pb2.CreateSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        return await self._create(self._tenant(context), request)

    async def _create(self, tenant: str, request: sandbox_pb2.CreateSandboxRequest) -> sandbox_pb2.Sandbox:
        self._check_provider(request.provider)
        validation.request_id(request.request_id)
        labels = validation.labels(dict(request.labels))
        validation.spec(request.spec, max_ttl=self._settings.max_ttl_seconds)
        spec = self._driver.apply_defaults(request.spec, tenant)
        ttl = validation.seconds(request.spec.ttl, "spec.ttl", maximum=self._settings.max_ttl_seconds)
        setup, planned = (
            self._coding.plan_workspace(request.repository) if request.HasField("repository") else (None, None)
        )
        now = datetime.now(UTC)
        new = NewSandbox(
            tenant=tenant,
            request_id=request.request_id,
            request_hash=validation.request_hash(request),
            spec=spec,
            labels=labels,
            create_time=now,
            expire_time=now + timedelta(seconds=ttl or self._settings.default_ttl_seconds),
            metadata={WORKSPACE_METADATA_KEY: encode_workspace(planned)} if planned else {},
        )
        started = time.perf_counter()
        record = await self._driver.create(new)
        if record.tenant != tenant or record.request_hash != new.request_hash:
            raise already_exists(
                "REQUEST_ID_REUSED",
                f"request_id {request.request_id!r} was already used for a different CreateSandbox request",
            )
        # A retry that found the sandbox its request_id made was admitted then (records keep whole seconds: a
        # retry within the same second is admitted again, which can only refuse, never exceed the quota).
        if int(record.create_time.timestamp()) == int(new.create_time.timestamp()):
            await admit_sandbox(self._driver, record, self._settings.max_sandboxes_per_tenant)
        if setup is not None:
            name = SandboxName(self._driver.name, record.native_id)
            try:
                await self._coding.start_setup(name, record, setup)
            except BaseException:
                # A sandbox whose setup never started is of no use: do not leave it behind.
                await self._driver.delete(record.native_id)
                raise
        SANDBOX_CREATE_SECONDS.record(time.perf_counter() - started, {"provider": self._driver.name})
        ACTIVE_SANDBOXES.add(1, {"provider": self._driver.name})
        return to_proto(self._driver.name, record)

    @unary_errors
    async def GetSandbox(self, request: sandbox_pb2.GetSandboxRequest, context: Context) -> sandbox_pb2.Sandbox:
        tenant = self._tenant(context)
        record = await self._owned(parse_sandbox_name(request.name), tenant, endpoints=True)
        return to_proto(self._driver.name, record)

    @unary_errors
    async def ListSandboxes(
        self, request: sandbox_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_pb2.ListSandboxesResponse:
        tenant = self._tenant(context)
        self._check_provider(parse_parent(request.parent))
        size = validation.page_size(request.page_size)
        after = validation.decode_page_token(request.page_token)
        labels = validation.labels(dict(request.labels))
        # One extra record tells whether another page follows.
        records = await self._driver.list_sandboxes(tenant, labels, after, size + 1)
        page = records[:size]
        token = validation.encode_page_token(page[-1].native_id) if len(records) > size else ""
        return sandbox_pb2.ListSandboxesResponse(
            sandboxes=[to_proto(self._driver.name, r) for r in page], next_page_token=token
        )

    @unary_errors
    async def DeleteSandbox(
        self, request: sandbox_pb2.DeleteSandboxRequest, context: Context
    ) -> sandbox_pb2.DeleteSandboxResponse:
        tenant = self._tenant(context)
        name = parse_sandbox_name(request.name)
        try:
            await self._owned(name, tenant)
        except ApiError as err:
            # Already gone (or never the caller's): the desired end state holds, so deleting succeeds.
            if err.code == grpc.StatusCode.NOT_FOUND:
                return sandbox_pb2.DeleteSandboxResponse()
            raise
        self._owners.forget(name.native_id)
        await self._driver.delete(name.native_id)
        ACTIVE_SANDBOXES.add(-1, {"provider": self._driver.name})
        return sandbox_pb2.DeleteSandboxResponse()

    @stream_errors
    async def RunCommand(
        self, request: sandbox_pb2.RunCommandRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        tenant = self._tenant(context)
        name = parse_sandbox_name(request.sandbox, "sandbox")
        argv = validation.argv(list(request.argv))
        env = validation.env(dict(request.env), "env")
        working_dir = validation.absolute_path(request.working_dir, "working_dir")
        timeout = (
            validation.seconds(request.timeout, "timeout", maximum=self._settings.max_command_timeout_seconds)
            if request.HasField("timeout")
            else self._settings.default_command_timeout_seconds
        )
        await self._check_running(name, tenant)
        if env:
            argv, env = exec_scripts.with_user_env(argv), exec_scripts.user_env(env)
        async for event in self._executions.start(name, argv, env, working_dir, timeout):
            yield event

    @stream_errors
    async def AttachExecution(
        self, request: sandbox_pb2.AttachExecutionRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        tenant = self._tenant(context)
        name = parse_execution_name(request.name)
        out = validation.offset(request.stdout_offset, "stdout_offset")
        err = validation.offset(request.stderr_offset, "stderr_offset")
        await self._check_running(name.sandbox, tenant)
        async for event in self._coding.attach(name, self._executions.attach(name, out, err), out):
            yield event

    @unary_errors
    async def GetExecution(self, request: sandbox_pb2.GetExecutionRequest, context: Context) -> sandbox_pb2.Execution:
        tenant = self._tenant(context)
        name = parse_execution_name(request.name)
        await self._check_running(name.sandbox, tenant)
        return await self._executions.get(name)

    @unary_errors
    async def CancelExecution(
        self, request: sandbox_pb2.CancelExecutionRequest, context: Context
    ) -> sandbox_pb2.Execution:
        tenant = self._tenant(context)
        name = parse_execution_name(request.name)
        await self._check_running(name.sandbox, tenant)
        return await self._executions.cancel(name)

    @unary_errors
    async def WriteFile(self, request: sandbox_pb2.WriteFileRequest, context: Context) -> sandbox_pb2.WriteFileResponse:
        tenant = self._tenant(context)
        name = parse_sandbox_name(request.sandbox, "sandbox")
        path = validation.absolute_path(request.path, "path", required=True)
        mode = check_mode(request.mode)
        content = check_content(request.content)
        await self._check_running(name, tenant)
        size = await write_file(self._driver, name.native_id, path, content, mode)
        return sandbox_pb2.WriteFileResponse(path=path, size=size)

    @stream_errors
    async def ReadFile(
        self, request: sandbox_pb2.ReadFileRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.ReadFileResponse]:
        tenant = self._tenant(context)
        name = parse_sandbox_name(request.sandbox, "sandbox")
        path = validation.absolute_path(request.path, "path", required=True)
        await self._check_running(name, tenant)
        async for offset, data in read_file(self._driver, name.native_id, path):
            yield sandbox_pb2.ReadFileResponse(offset=offset, data=data)

    @stream_errors
    async def ExecuteAgent(
        self, request: sandbox_pb2.ExecuteAgentRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        tenant = self._tenant(context)
        name = parse_sandbox_name(request.sandbox, "sandbox")
        await self._check_running(name, tenant)
        record = await self._owned(name, tenant)
        async for event in self._coding.execute_agent(name, record, request):
            yield event

    @unary_errors
    async def PushChanges(
        self, request: sandbox_pb2.PushChangesRequest, context: Context
    ) -> sandbox_pb2.PushChangesResponse:
        tenant = self._tenant(context)
        name = parse_sandbox_name(request.sandbox, "sandbox")
        await self._check_running(name, tenant)
        return await self._coding.push(name, await self._owned(name, tenant), request)

    @stream_errors
    async def RunTask(
        self, request: sandbox_pb2.RunTaskRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.TaskEvent]:
        tenant = self._tenant(context)

        async def create(create_request: sandbox_pb2.CreateSandboxRequest) -> sandbox_pb2.Sandbox:
            return await self._create(tenant, create_request)

        async for event in self._tasks.run(request, create, lambda name: self._owned(name, tenant)):
            yield event

    @stream_errors
    async def AttachTask(
        self, request: sandbox_pb2.AttachTaskRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.TaskEvent]:
        tenant = self._tenant(context)
        name = parse_sandbox_name(request.name)
        await self._check_running(name, tenant)
        async for event in self._tasks.attach(name, request.git_token, lambda n: self._owned(n, tenant)):
            yield event

    @stream_errors
    async def RunTasks(
        self, request: sandbox_pb2.RunTasksRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.RunTasksEvent]:
        self._tenant(context)
        raise failed_precondition("USE_ORCHESTRATOR", "RunTasks spans providers: call it on the orchestrator")
        yield sandbox_pb2.RunTasksEvent()  # pragma: no cover  (makes this an async generator)

    @unary_errors
    async def ListProviders(
        self, request: sandbox_pb2.ListProvidersRequest, context: Context
    ) -> sandbox_pb2.ListProvidersResponse:
        self._tenant(context)
        ready = await self._driver.ready()
        status = sandbox_pb2.ProviderStatus(
            name=self._driver.name, ready=ready, detail="" if ready else "backend not reachable"
        )
        return sandbox_pb2.ListProvidersResponse(providers=[status])
