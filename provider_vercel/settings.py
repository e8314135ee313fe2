"""Vercel provider settings: SANDBOX_* from the kit plus SANDBOX_VERCEL_* knobs, and Vercel's own credential
variables (VERCEL_TOKEN, VERCEL_TEAM_ID, VERCEL_PROJECT_ID). Without VERCEL_TOKEN the SDK resolves
credentials itself (OIDC: VERCEL_OIDC_TOKEN)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from provider_kit.settings import ProviderSettings


class VercelSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    vercel_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("VERCEL_TOKEN"))
    vercel_team_id: str = Field(default="", validation_alias=AliasChoices("VERCEL_TEAM_ID"))
    vercel_project_id: str = Field(default="", validation_alias=AliasChoices("VERCEL_PROJECT_ID"))
    # The Sandbox API's base URL (the SDK's default is Vercel's own); SANDBOX_VERCEL_API_URL.
    vercel_api_url: str = "https://vercel.com/api"
    # The runtime image when the request names none; empty lets Vercel choose its default runtime.
    vercel_default_image: str = ""
    vercel_default_vcpus: int = 2
    vercel_max_vcpus: int = 8
    # The longest a Vercel session may run (5 hours on Pro and Enterprise, 45 minutes on Hobby).
    vercel_max_session_seconds: float = 5 * 3600.0
    # While a command runs in a session shorter than its sandbox's life, the session is extended to last this
    # much longer (checked this often), never past the sandbox's expiry.
    vercel_session_margin_seconds: float = 600.0
    vercel_session_check_seconds: float = 60.0
    # Each API request's timeout (log streams and waits have none).
    vercel_request_timeout_seconds: float = 60.0
    # Names this deployment in a sandbox tag; the reaper only deletes sandboxes with its own owner.
    vercel_owner: str = "sandbox-platform"

    @model_validator(mode="after")
    def _token_needs_team_and_project(self) -> VercelSettings:
        if self.vercel_token is not None and not (self.vercel_team_id and self.vercel_project_id):
            raise ValueError("VERCEL_TOKEN needs VERCEL_TEAM_ID and VERCEL_PROJECT_ID")
        return self
