"""Orchestrator settings, from SANDBOX_* environment variables (see the README table)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from provider_kit.auth import parse_tenant_tokens
from provider_kit.names import PROVIDER_RE
from provider_kit.settings import ServerSettings, check_provider_token, split_list


class OrchestratorSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore")

    # Provider gRPC targets: "docker=dns:///provider-docker:50051;e2b=dns:///provider-e2b:50051".
    providers: str
    # Client tokens, "token=tenant" entries separated by commas or newlines; or a file holding them.
    tenant_tokens: SecretStr = SecretStr("")
    tenant_tokens_file: Path | None = None
    # The credential presented to providers (the first, if several are listed for a rotation).
    provider_token: SecretStr

    _check_token = field_validator("provider_token")(classmethod(lambda cls, v: check_provider_token(v)))

    def outgoing_provider_token(self) -> str:
        return split_list(self.provider_token.get_secret_value())[0]

    # CA bundle to verify providers' TLS certificates; plaintext when unset.
    provider_tls_ca_file: Path | None = None
    # The orchestrator's client certificate, for providers that require mTLS.
    provider_tls_cert_file: Path | None = None
    provider_tls_key_file: Path | None = None

    @field_validator("providers")
    @classmethod
    def _check_providers(cls, value: str) -> str:
        parse_providers(value)
        return value

    def provider_targets(self) -> dict[str, str]:
        return parse_providers(self.providers)

    def tenant_token_map(self) -> dict[str, str]:
        text = self.tenant_tokens.get_secret_value()
        if self.tenant_tokens_file is not None:
            text += "\n" + self.tenant_tokens_file.read_text()
        tokens = parse_tenant_tokens(text)
        if not tokens:
            raise ValueError("set SANDBOX_TENANT_TOKENS or SANDBOX_TENANT_TOKENS_FILE: no client could authenticate")
        return tokens


def parse_providers(value: str) -> dict[str, str]:
    targets: dict[str, str] = {}
    for entry in re.split(r"[;\s]+", value.strip()):
        if not entry:
            continue
        name, sep, target = entry.partition("=")
        if not sep or not PROVIDER_RE.fullmatch(name) or not target:
            raise ValueError(f"SANDBOX_PROVIDERS entries must be name=target, got {entry!r}")
        targets[name] = target
    if not targets:
        raise ValueError("SANDBOX_PROVIDERS names no provider")
    return targets
