"""Who owns a sandbox, checked against the provider's own record.

Authorization never rests on what a caller or a sandbox supplies: the record a driver returns must carry
exactly the native id that was asked for (an engine that resolves id prefixes or short ids would otherwise
hand back somebody else's sandbox), and every way a sandbox can be missing gives one message, so a caller
cannot tell another tenant's sandbox from one that does not exist.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import grpc

from provider_kit.driver import SandboxRecord
from provider_kit.errors import ApiError, not_found
from provider_kit.names import SandboxName

CACHE_SIZE = 10_000
# How long a replica trusts what it learnt of a sandbox's owner. Native ids are never reused by another
# tenant (they are random, or derived from the tenant and request id), and a delete through this replica
# drops the entry; the bound covers a provider that reuses ids anyway.
CACHE_SECONDS = 30.0


def sandbox_not_found(name: SandboxName) -> ApiError:
    """The one answer for a sandbox that is missing, not managed by this platform, or another tenant's; worded
    as the drivers word a sandbox their backend does not know ("sandbox <native id> does not exist"), so a
    process call that finds the sandbox gone says the same."""
    return not_found("SANDBOX_NOT_FOUND", f"sandbox {name.native_id} does not exist")


def check_owner(name: SandboxName, record: SandboxRecord, tenant: str) -> SandboxRecord:
    """The record if it is exactly the named sandbox and belongs to tenant."""
    if record.native_id != name.native_id or record.tenant != tenant:
        raise sandbox_not_found(name)
    return record


def uniform_not_found(err: ApiError, name: SandboxName) -> ApiError:
    """A driver's NOT_FOUND for a sandbox, in the uniform wording; other errors unchanged."""
    return sandbox_not_found(name) if err.code == grpc.StatusCode.NOT_FOUND else err


class OwnerCache:
    """Owners of running sandboxes this replica has checked, keyed by the full native id (never by a
    caller's spelling of it); saves a provider round trip on every command."""

    def __init__(self, size: int = CACHE_SIZE, ttl_seconds: float = CACHE_SECONDS) -> None:
        self._size = size
        self._ttl = ttl_seconds
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, native_id: str) -> str | None:
        entry = self._entries.get(native_id)
        if entry is None:
            return None
        owner, expires = entry
        if time.monotonic() >= expires:
            del self._entries[native_id]
            return None
        return owner

    def put(self, record: SandboxRecord) -> None:
        self._entries[record.native_id] = (record.tenant, time.monotonic() + self._ttl)
        self._entries.move_to_end(record.native_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, native_id: str) -> None:
        self._entries.pop(native_id, None)
