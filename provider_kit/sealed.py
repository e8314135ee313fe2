"""Platform state kept inside a sandbox, sealed so that the sandbox cannot forge, edit or copy it.

Whatever runs in a sandbox (a possibly prompt-injected agent) can write any file there. State the platform
later acts on, such as a task's progress, is therefore stored with an HMAC-SHA256 tag over the content, the
purpose of the state, the sandbox's full resource name and its tenant, keyed by a secret that only the
provider services hold (SANDBOX_STATE_KEYS) and that never enters a sandbox. A file that was edited,
truncated, written from scratch, or copied from another sandbox or tenant fails the check.

A sealed blob is one header line, `sandbox-sealed v1 <key id> <tag>`, then the content bytes. The key id
(a hash of the key, never the key) tells which key sealed it: the first configured key seals, every
configured key opens, so keys rotate without downtime.

What a seal cannot tell is which of the sandbox's own sealed states is the latest: the sandbox may put back
an older one. Callers must only act on such state in ways the sandbox's own tenant may ask for anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

_MAGIC = b"sandbox-sealed v1"
_HEADER = re.compile(rb"sandbox-sealed v1 ([0-9a-f]{16}) ([0-9a-f]{64})")
_DOMAIN = b"sandbox.platform/sealed/v1\0"
log = logging.getLogger(__name__)


class SealError(Exception):
    """A blob that is not a valid seal for the given sandbox and tenant; the message is for logs (it never holds
    the blob's content)."""


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"sandbox.platform/state-key-id\0" + key).hexdigest()[:16]


def _framed(*parts: bytes) -> bytes:
    """Each part with its length first, so that no two different (purpose, name, tenant) give the same bytes."""
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


class Sealer:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("a Sealer needs at least one key")
        encoded = [key.encode() for key in keys]
        self._signing = encoded[0]
        self._keys = {_key_id(key): key for key in reversed(encoded)}

    @classmethod
    def from_settings(cls, keys: list[str]) -> Sealer:
        """The Sealer for the configured keys (SANDBOX_STATE_KEYS); without any, one with a random key of this
        process only: sealed state then stays unforgeable, but no other replica (or restart) can open it."""
        if keys:
            return cls(keys)
        log.warning(
            "SANDBOX_STATE_KEYS is not set: task state is sealed with a key of this process only, so tasks "
            "cannot be re-attached through other replicas or after a restart; set the same keys on every replica"
        )
        return cls([secrets.token_urlsafe(32)])

    @staticmethod
    def _tag(key: bytes, purpose: str, sandbox: str, tenant: str, content: bytes) -> str:
        message = _DOMAIN + _framed(purpose.encode(), sandbox.encode(), tenant.encode()) + content
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def seal(self, purpose: str, content: bytes, *, sandbox: str, tenant: str) -> bytes:
        tag = self._tag(self._signing, purpose, sandbox, tenant, content)
        return b"%s %s %s\n" % (_MAGIC, _key_id(self._signing).encode(), tag.encode()) + content

    def open(self, purpose: str, blob: bytes, *, sandbox: str, tenant: str) -> bytes:
        """The content of a blob sealed for this purpose, sandbox and tenant; raises SealError otherwise."""
        header, newline, content = blob.partition(b"\n")
        match = _HEADER.fullmatch(header)
        if not newline or match is None:
            raise SealError("it is not a sealed state")
        key = self._keys.get(match[1].decode())
        if key is None:
            raise SealError("it was sealed with a key this server does not hold (or forged)")
        expected = self._tag(key, purpose, sandbox, tenant, content)
        if not hmac.compare_digest(expected.encode(), match[2]):
            raise SealError("its seal does not match its content, sandbox and tenant")
        return content
