"""Settings shared by every server, read from SANDBOX_* environment variables (see the README table)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    listen: str = "[::]:50051"
    drain_seconds: float = 30.0
    log_level: str = "INFO"
    keepalive_seconds: float = 30.0
    max_connection_age_seconds: float = 600.0
    # In-flight streams keep a connection past its max age for this long (long agent runs).
    max_connection_age_grace_seconds: float = 1800.0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # The event loop watchdog (provider_kit/watchdog.py): a loop that runs no callback for this long is
    # stalled, and the server reports NOT_SERVING until hold seconds after the stall ended.
    watchdog_stall_seconds: float = Field(default=3.0, gt=0)
    watchdog_hold_seconds: float = Field(default=10.0, ge=0)


class ProviderSettings(ServerSettings):
    # The credential the orchestrator presents; providers refuse every other caller. Comma-separated tokens
    # are all accepted, so a token can be rotated without downtime (add the new one, switch the orchestrator,
    # drop the old one).
    provider_token: SecretStr

    _check_token = field_validator("provider_token")(classmethod(lambda cls, v: check_provider_token(v)))

    def accepted_provider_tokens(self) -> list[str]:
        return split_list(self.provider_token.get_secret_value())

    stream_keepalive_seconds: float = 15.0
    default_command_timeout_seconds: float = 1800.0
    max_command_timeout_seconds: float = 86400.0
    default_ttl_seconds: float = 3600.0
    max_ttl_seconds: float = 7 * 86400.0
    reap_interval_seconds: float = 60.0
    default_agent_timeout_seconds: float = 1800.0
    # Where repositories are cloned inside sandboxes.
    workspace_dir: str = "/workspace"
    # Plain-HTTP and file:// repository URLs are refused unless enabled (tests and local demos use them).
    git_allow_http: bool = False
    git_allow_file_urls: bool = False
    # Per-tenant quota: the most sandboxes a tenant may have at once (0: no limit), counted from the provider's
    # own records on every create (provider_kit/quotas.py).
    max_sandboxes_per_tenant: int = 50
    # Per-sandbox quota: the most executions one sandbox may run at once (0: no limit), counted inside it by
    # each start under a lock (provider_kit/exec_scripts.py). With the sandbox quota it bounds a tenant's
    # concurrent executions at max_sandboxes_per_tenant x max_executions_per_sandbox.
    max_executions_per_sandbox: int = 64

    # The keys that seal platform state kept inside sandboxes (provider_kit/sealed.py): the same on every
    # provider replica, held by nothing else. Comma-separated: the first seals, all open, so a key rotates
    # without downtime (add the new one second, then move it first, then drop the old one once no task
    # sealed with it is left). Unset: a random key of this process (a warning says so), so task state is
    # still unforgeable but only this process can read it back.
    state_keys: SecretStr | None = None

    _check_state_keys = field_validator("state_keys")(classmethod(lambda cls, v: check_state_keys(v)))

    def accepted_state_keys(self) -> list[str]:
        return split_list(self.state_keys.get_secret_value()) if self.state_keys else []


def check_secret_list(value: SecretStr, variable: str, noun: str, min_chars: int) -> SecretStr:
    """A comma-separated list of secrets, each at least min_chars long."""
    items = split_list(value.get_secret_value())
    if not items or any(len(item) < min_chars for item in items):
        # Never echo the value: it is a secret.
        raise ValueError(f"{variable} must hold one or more comma-separated {noun} of {min_chars}+ characters")
    return value


def check_provider_token(value: SecretStr) -> SecretStr:
    return check_secret_list(value, "SANDBOX_PROVIDER_TOKEN", "tokens", 16)


MIN_STATE_KEY_CHARS = 32


def check_state_keys(value: SecretStr | None) -> SecretStr | None:
    return None if value is None else check_secret_list(value, "SANDBOX_STATE_KEYS", "keys", MIN_STATE_KEY_CHARS)


def split_list(value: str) -> list[str]:
    """Comma-separated setting values, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]
