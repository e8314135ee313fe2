"""Settings shared by every server, read from SANDBOX_* environment variables (see the README table)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
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


class ProviderSettings(ServerSettings):
    # The credential the orchestrator presents; providers refuse every other caller.
    provider_token: SecretStr
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


def split_list(value: str) -> list[str]:
    """Comma-separated setting values, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]
