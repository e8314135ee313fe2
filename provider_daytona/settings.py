"""Daytona provider settings: SANDBOX_* from the kit, SANDBOX_DAYTONA_* for this provider, and Daytona's own
DAYTONA_API_KEY / DAYTONA_API_URL / DAYTONA_TARGET (the names the SDK and Daytona's docs use)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from provider_kit.settings import ProviderSettings


class DaytonaSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    daytona_api_key: SecretStr = Field(validation_alias=AliasChoices("DAYTONA_API_KEY", "SANDBOX_DAYTONA_API_KEY"))
    daytona_api_url: str = Field(
        "https://app.daytona.io/api", validation_alias=AliasChoices("DAYTONA_API_URL", "SANDBOX_DAYTONA_API_URL")
    )
    # The region sandboxes are created in; empty means the organization's default.
    daytona_target: str = Field("", validation_alias=AliasChoices("DAYTONA_TARGET", "SANDBOX_DAYTONA_TARGET"))
    # Snapshot for requests that name no image; empty means Daytona's default snapshot. It must have bash,
    # GNU coreutils, perl and git (the execution model's scripts run there).
    daytona_default_snapshot: str = ""
    # Daytona stops a sandbox after this many minutes without API activity; 0 disables it. An agent may run
    # silently for longer than any idle limit, so the default leaves the lifetime to the TTL (ttl_minutes).
    daytona_auto_stop_minutes: int = 0
    daytona_max_cpus: int = 4
    daytona_max_memory_gib: int = 8
    # Seconds to wait for a sandbox to start (Daytona may build or pull a snapshot first).
    daytona_create_timeout_seconds: float = 300.0
    # Names this deployment in sandbox labels; the reaper only deletes sandboxes with its own owner.
    daytona_owner: str = "sandbox-platform"
