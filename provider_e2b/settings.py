"""E2B provider settings: SANDBOX_* from the kit, SANDBOX_E2B_* for this provider, and E2B's own variables
for the account and endpoints (E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL, E2B_DOMAIN, E2B_HTTP_VERSION)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from provider_kit.settings import ProviderSettings


class E2BSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    # E2B caps a sandbox's timeout at 24 hours, so no sandbox may be asked to live longer.
    max_ttl_seconds: float = 86400.0

    e2b_api_key: SecretStr = Field(validation_alias=AliasChoices("E2B_API_KEY", "SANDBOX_E2B_API_KEY"))
    # Unset: E2B's cloud (https://api.<domain>, sandboxes at <domain>).
    e2b_api_url: str | None = Field(default=None, validation_alias=AliasChoices("E2B_API_URL", "SANDBOX_E2B_API_URL"))
    e2b_sandbox_url: str | None = Field(
        default=None, validation_alias=AliasChoices("E2B_SANDBOX_URL", "SANDBOX_E2B_SANDBOX_URL")
    )
    e2b_domain: str | None = Field(default=None, validation_alias=AliasChoices("E2B_DOMAIN", "SANDBOX_E2B_DOMAIN"))
    e2b_http_version: Literal["1.1", "2"] = Field(
        default="2", validation_alias=AliasChoices("E2B_HTTP_VERSION", "SANDBOX_E2B_HTTP_VERSION")
    )
    # The template a sandbox starts from when the request names no image.
    e2b_default_template: str = "base"
    # Names this deployment in sandbox metadata; the reaper and every lookup only touch its own sandboxes.
    e2b_owner: str = "sandbox-platform"
    # Per control-plane request; process streams have no overall timeout (they may run for hours).
    e2b_request_timeout_seconds: float = 60.0
    # The SDK's retries of 429/502/503/504 answers. Safe: every control-plane call the driver makes is a
    # read, a delete, or a create carrying an idempotency key.
    e2b_retries: int = 3
