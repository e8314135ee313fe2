"""A sandbox's platform facts (tenant, request id and hash, times, spec, labels, kit metadata) stored on the
provider's own resource as a flat string map (Docker labels, E2B metadata, Daytona labels), and read back,
so that any replica can serve any sandbox with no state of its own."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from provider_kit.driver import NewSandbox, SandboxRecord
from sandbox.v1 import sandbox_pb2

#: Platform keys; user labels and kit metadata get prefixes of their own so they can never collide.
KEY = "sandbox.platform/"
USER_LABEL = "sandbox.platform.label/"
META_LABEL = "sandbox.platform.meta/"
OWNER_KEY = f"{KEY}managed-by"
TENANT_KEY = f"{KEY}tenant"
REQUEST_ID_KEY = f"{KEY}request-id"
EXPIRE_KEY = f"{KEY}expire-time"


def epoch(value: datetime) -> str:
    return str(int(value.timestamp()))


def from_epoch(value: str) -> datetime:
    return datetime.fromtimestamp(int(value or 0), UTC)


def encode_spec(spec: sandbox_pb2.SandboxSpec) -> str:
    """The spec without env: env values may be secrets, and these maps are readable by anyone who can list
    the provider's resources."""
    stored = sandbox_pb2.SandboxSpec()
    stored.CopyFrom(spec)
    stored.ClearField("env")
    return base64.b64encode(stored.SerializeToString()).decode()


def decode_spec(value: str) -> sandbox_pb2.SandboxSpec:
    return sandbox_pb2.SandboxSpec.FromString(base64.b64decode(value))


def encode(new: NewSandbox, owner: str) -> dict[str, str]:
    values = {
        OWNER_KEY: owner,
        TENANT_KEY: new.tenant,
        REQUEST_ID_KEY: new.request_id,
        f"{KEY}request-hash": new.request_hash,
        f"{KEY}create-time": epoch(new.create_time),
        EXPIRE_KEY: epoch(new.expire_time),
        f"{KEY}spec": encode_spec(new.spec),
    }
    values.update({f"{USER_LABEL}{key}": value for key, value in new.labels.items()})
    values.update({f"{META_LABEL}{key}": value for key, value in new.metadata.items()})
    return values


def decode(native_id: str, values: dict[str, str], state: sandbox_pb2.Sandbox.State.ValueType) -> SandboxRecord:
    return SandboxRecord(
        native_id=native_id,
        tenant=values.get(TENANT_KEY, ""),
        request_id=values.get(REQUEST_ID_KEY, ""),
        request_hash=values.get(f"{KEY}request-hash", ""),
        spec=decode_spec(values.get(f"{KEY}spec", "")),
        labels={k.removeprefix(USER_LABEL): v for k, v in values.items() if k.startswith(USER_LABEL)},
        state=state,
        create_time=from_epoch(values.get(f"{KEY}create-time", "")),
        expire_time=from_epoch(values.get(EXPIRE_KEY, "")),
        metadata={k.removeprefix(META_LABEL): v for k, v in values.items() if k.startswith(META_LABEL)},
    )
