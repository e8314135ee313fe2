"""Resource names: providers/{provider}/sandboxes/{native_id}[/executions/{execution_id}].

The name carries everything a stateless replica needs to find a sandbox again: which provider hosts it
and the provider's own id for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provider_kit.errors import invalid_argument

_PROVIDER = r"[a-z][a-z0-9-]{0,30}"
# Native ids are opaque to the kit but must be safe inside a name and a shell argument.
_NATIVE_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_EXECUTION_ID = r"[a-z0-9][a-z0-9-]{0,62}"

_SANDBOX_RE = re.compile(rf"providers/({_PROVIDER})/sandboxes/({_NATIVE_ID})")
_EXECUTION_RE = re.compile(rf"providers/({_PROVIDER})/sandboxes/({_NATIVE_ID})/executions/({_EXECUTION_ID})")
_PARENT_RE = re.compile(rf"providers/({_PROVIDER})")
PROVIDER_RE = re.compile(_PROVIDER)


@dataclass(frozen=True)
class SandboxName:
    provider: str
    native_id: str

    def __str__(self) -> str:
        return f"providers/{self.provider}/sandboxes/{self.native_id}"


@dataclass(frozen=True)
class ExecutionName:
    sandbox: SandboxName
    execution_id: str

    def __str__(self) -> str:
        return f"{self.sandbox}/executions/{self.execution_id}"


def parse_sandbox_name(name: str, field: str = "name") -> SandboxName:
    match = _SANDBOX_RE.fullmatch(name)
    if not match:
        raise invalid_argument(
            "INVALID_NAME",
            f"{field} must look like providers/{{provider}}/sandboxes/{{id}}, got {name!r:.200}",
        )
    return SandboxName(match[1], match[2])


def parse_execution_name(name: str, field: str = "name") -> ExecutionName:
    match = _EXECUTION_RE.fullmatch(name)
    if not match:
        raise invalid_argument(
            "INVALID_NAME",
            f"{field} must look like providers/{{provider}}/sandboxes/{{id}}/executions/{{execution_id}}, "
            f"got {name!r:.200}",
        )
    return ExecutionName(SandboxName(match[1], match[2]), match[3])


def parse_parent(parent: str) -> str:
    match = _PARENT_RE.fullmatch(parent)
    if not match:
        raise invalid_argument("INVALID_NAME", f"parent must look like providers/{{provider}}, got {parent!r:.200}")
    return match[1]


def provider_of(name: str) -> str:
    """The provider named by any sandbox or execution name (used by the orchestrator to route)."""
    if _EXECUTION_RE.fullmatch(name):
        return parse_execution_name(name).sandbox.provider
    return parse_sandbox_name(name).provider
