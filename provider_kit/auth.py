"""Credentials: clients present bearer tokens to the orchestrator, which maps each to a tenant; providers
accept only the orchestrator's own token and take the tenant it forwards."""

from __future__ import annotations

import hmac
import re
from typing import Any

import grpc

from provider_kit.errors import unauthenticated

TENANT_HEADER = "x-sandbox-tenant"
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ")
    return ""


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def tokens_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def provider_caller_tenant(context: grpc.aio.ServicerContext[Any, Any], accepted_tokens: list[str]) -> str:
    """The tenant a provider call acts for; UNAUTHENTICATED unless one of the orchestrator's tokens is presented
    (several are accepted during a rotation)."""
    given = bearer_token(context)
    # Compare with every token, so the time taken does not tell which one (if any) matched.
    if not given or sum(tokens_equal(given, token) for token in accepted_tokens) == 0:
        raise unauthenticated("BAD_CREDENTIALS", "this provider accepts only calls from the orchestrator")
    tenant = metadata_value(context, TENANT_HEADER)
    if not TENANT_RE.fullmatch(tenant):
        raise unauthenticated("NO_TENANT", f"calls must carry a valid {TENANT_HEADER} header")
    return tenant


def parse_tenant_tokens(text: str) -> dict[str, str]:
    """Parses 'token=tenant' entries, one per line or comma-separated; '#' starts a comment."""
    tokens: dict[str, str] = {}
    for raw in re.split(r"[,\n]", text):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        token, sep, tenant = entry.partition("=")
        token, tenant = token.strip(), tenant.strip()
        if not sep or len(token) < 16 or not TENANT_RE.fullmatch(tenant):
            # Never echo the entry: it holds a secret.
            raise ValueError("tenant tokens must be 'token=tenant' with tokens of 16+ characters")
        tokens[token] = tenant
    return tokens


class TenantTokens:
    """Maps client bearer tokens to tenants in constant time per configured token."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = list(tokens.items())

    def tenant_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        given = bearer_token(context)
        tenant = ""
        for token, owner in self._tokens:
            if tokens_equal(given, token):
                tenant = owner
        if not tenant:
            raise unauthenticated("BAD_CREDENTIALS", "send 'authorization: Bearer <token>' with a valid token")
        return tenant
