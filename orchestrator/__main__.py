"""python -m orchestrator: serves SandboxProvider in front of the configured provider processes."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from orchestrator.router import Router
from orchestrator.servicer import OrchestratorServicer
from orchestrator.settings import OrchestratorSettings
from provider_kit.auth import TenantTokens
from provider_kit.server import exit_on_bad_settings, serve
from sandbox.v1 import sandbox_pb2_grpc


async def run(settings: OrchestratorSettings) -> None:
    router = Router(settings)
    servicer = OrchestratorServicer(
        router, TenantTokens(settings.tenant_token_map()), settings.outgoing_provider_token()
    )

    async def always_ready() -> bool:
        # Stateless: it can always answer, if only with UNAVAILABLE for a provider that is down.
        return True

    await serve(
        name="orchestrator",
        settings=settings,
        add_services=lambda server: sandbox_pb2_grpc.add_SandboxProviderServicer_to_server(servicer, server),
        ready=always_ready,
        on_stop=router.close,
    )


def main() -> None:
    try:
        settings = OrchestratorSettings()  # type: ignore[call-arg]  # fields come from the environment
        settings.tenant_token_map()
    except (ValidationError, ValueError, OSError) as err:
        exit_on_bad_settings(err)
        return
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
