"""Input validation, done before any side effect. Every failure is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from google.protobuf import duration_pb2

from provider_kit.errors import invalid_argument
from sandbox.v1 import sandbox_pb2

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_LABELS = 32
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 256 * 1024
MAX_ARGV_ITEMS = 4096
MAX_ARGV_BYTES = 256 * 1024
MAX_PATH = 4096
MAX_PORTS = 8

_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_LABEL_KEY = re.compile(r"[a-z0-9]([a-z0-9_./-]{0,61}[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")
_NATIVE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _fail(field: str, problem: str) -> None:
    raise invalid_argument("INVALID_FIELD", f"{field} {problem}", field=field)


def seconds(value: duration_pb2.Duration, field: str, *, maximum: float) -> float:
    total = value.seconds + value.nanos / 1e9
    if total < 0:
        _fail(field, "must not be negative")
    if total > maximum:
        _fail(field, f"must be at most {maximum:g} seconds")
    return total


def request_id(value: str) -> str:
    if value and not _REQUEST_ID.fullmatch(value):
        _fail("request_id", "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


def labels(value: dict[str, str], field: str = "labels") -> dict[str, str]:
    if len(value) > MAX_LABELS:
        _fail(field, f"may hold at most {MAX_LABELS} entries")
    for key, val in value.items():
        if not _LABEL_KEY.fullmatch(key):
            _fail(f"{field}[{key[:64]!r}]", "key must be 1-63 lowercase letters, digits, '_', '.', '/' or '-'")
        if not _LABEL_VALUE.fullmatch(val):
            _fail(f"{field}[{key!r}]", "value must be at most 63 letters, digits, '_', '.' or '-'")
    return dict(value)


def env(value: dict[str, str], field: str) -> dict[str, str]:
    if len(value) > MAX_ENV_VARS:
        _fail(field, f"may hold at most {MAX_ENV_VARS} variables")
    total = 0
    for key, val in value.items():
        if not _ENV_NAME.fullmatch(key):
            _fail(f"{field}[{key[:64]!r}]", "name must be letters, digits and '_', not starting with a digit")
        if "\0" in val:
            _fail(f"{field}[{key!r}]", "value must not contain NUL bytes")
        total += len(key) + len(val.encode())
    if total > MAX_ENV_BYTES:
        _fail(field, f"must total at most {MAX_ENV_BYTES} bytes")
    return dict(value)


def argv(value: list[str]) -> list[str]:
    if not value or not value[0]:
        _fail("argv", "must name a program to run")
    if "=" in value[0]:
        _fail("argv[0]", "must not contain '=' (it would read as an environment assignment)")
    if len(value) > MAX_ARGV_ITEMS:
        _fail("argv", f"may hold at most {MAX_ARGV_ITEMS} items")
    if any("\0" in item for item in value):
        _fail("argv", "must not contain NUL bytes")
    if sum(len(item.encode()) for item in value) > MAX_ARGV_BYTES:
        _fail("argv", f"must total at most {MAX_ARGV_BYTES} bytes")
    return list(value)


def absolute_path(value: str, field: str, *, required: bool = False) -> str:
    if not value and not required:
        return value
    if not value.startswith("/") or "\0" in value or len(value) > MAX_PATH:
        _fail(field, "must be an absolute path without NUL bytes")
    return value


def spec(value: sandbox_pb2.SandboxSpec, *, max_ttl: float) -> None:
    if value.image and not _IMAGE.fullmatch(value.image):
        _fail("spec.image", "must be an image reference such as 'debian:bookworm'")
    for field in ("milli_cpus", "memory_bytes", "pids_limit"):
        if getattr(value, field) < 0:
            _fail(f"spec.{field}", "must not be negative")
    if value.network_mode and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", value.network_mode):
        _fail("spec.network_mode", "must be a network mode name such as 'none'")
    for i, mount in enumerate(value.mounts):
        absolute_path(mount.source, f"spec.mounts[{i}].source", required=True)
        absolute_path(mount.target, f"spec.mounts[{i}].target", required=True)
    env(dict(value.env), "spec.env")
    seconds(value.ttl, "spec.ttl", maximum=max_ttl)
    if len(value.ports) > MAX_PORTS:
        _fail("spec.ports", f"may hold at most {MAX_PORTS} ports")
    if len(set(value.ports)) != len(value.ports) or any(not 1 <= port <= 65535 for port in value.ports):
        _fail("spec.ports", "must be distinct port numbers from 1 to 65535")


def request_hash(request: sandbox_pb2.CreateSandboxRequest) -> str:
    """Fingerprint of what a CreateSandbox asks for. Env values are left out so no secret is hashed into a
    label; env names still count."""
    copy = sandbox_pb2.CreateSandboxRequest()
    copy.CopyFrom(request)
    for key in copy.spec.env:
        copy.spec.env[key] = ""
    copy.repository.ClearField("token")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:32]


def page_size(value: int) -> int:
    if value < 0:
        _fail("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(last_native_id: str) -> str:
    return base64.urlsafe_b64encode(last_native_id.encode()).decode()


def decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        after = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not _NATIVE_ID.fullmatch(after):
        _fail("page_token", "is not a token returned by ListSandboxes")
    return after


def text(value: str, field: str, *, maximum: int, required: bool = False) -> str:
    if required and not value.strip():
        _fail(field, "must not be empty")
    if "\0" in value:
        _fail(field, "must not contain NUL bytes")
    if len(value.encode()) > maximum:
        _fail(field, f"must be at most {maximum} bytes")
    return value


def token(value: str, field: str) -> str:
    """Model names, session ids and the like: short, printable, safe as one argv element."""
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}", value):
        _fail(field, "must be letters, digits and '_.:/@+-', at most 200 characters")
    return value


def user_env(value: dict[str, str], field: str) -> dict[str, str]:
    """Environment supplied by a client: the SANDBOX_ prefix is the platform's own."""
    checked = env(value, field)
    for key in checked:
        if key.startswith("SANDBOX_"):
            _fail(f"{field}[{key!r}]", "must not start with SANDBOX_ (reserved for the platform)")
    return checked


def offset(value: int, field: str) -> int:
    if value < 0:
        _fail(field, "must not be negative")
    return value
