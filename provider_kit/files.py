"""WriteFile and ReadFile, written once over the driver's upload and process stream.

Every provider places a file with the same command, so all behave the same: the bytes are copied next to the
target and the copy is renamed into place. They reach that command on its standard input where the driver
can pass one (Docker: one round trip), or else through the provider's native file API first, at a fresh
staging path in /tmp (which exists everywhere, so no driver has to create directories). The rename
makes the write atomic (a reader sees the old file or the new one, never half of it), `mv -T` refuses to
replace a directory, the copy belongs to the user commands run as (whichever user the provider's file API
wrote as), and the mode is applied before the file appears.

Reads stream `cat` through the driver's process stream, which every provider has already proven byte-exact
and backpressured; the checks before it give the same errors on every provider.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from provider_kit.driver import Driver, Exit
from provider_kit.errors import failed_precondition, invalid_argument, not_found
from provider_kit.streams import closing

MAX_FILE_BYTES = 10 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
DEFAULT_MODE = 0o644
STAGING_PREFIX = "/tmp/.sandbox-upload-"

# Exit codes of the scripts below that name a problem with the caller's path.
_MISSING, _NOT_A_FILE, _IS_A_DIRECTORY, _BAD_PARENT = 66, 67, 68, 69

# staged: the uploaded file, or "-" for the bytes on stdin. Root writes here, often into a directory the agent
# owns (the checkout), so nothing is opened by a name the agent could have planted or swapped: the copy gets a
# random name, is created exclusively (noclobber: a planted symlink or FIFO makes it fail, never followed), and
# is written, measured and chmod-ed through its open descriptor (/proc/self/fd/3), never by name again. A swap
# before the rename only moves the agent's own thing into place, which the agent could do anyway.
_PLACE = rf"""
staged=$1 path=$2 mode=$3 tmp=
# The staged upload goes whatever happens, the copy too unless it was moved into place.
trap '[ -z "$tmp" ] || rm -f -- "$tmp"; [ "$staged" = - ] || rm -f -- "$staged"' EXIT
dir=$(dirname -- "$path")
[ -d "$path" ] && exit {_IS_A_DIRECTORY}
mkdir -p -- "$dir" 2>/dev/null || exit {_BAD_PARENT}
tmp=$(mktemp -u -- "$dir/.$(basename -- "$path").writing-XXXXXXXXXX") || exit {_BAD_PARENT}
set -C
command exec 3> "$tmp" || exit {_BAD_PARENT}
if [ "$staged" = - ]; then cat >&3 || exit {_BAD_PARENT}; else cat -- "$staged" >&3 || exit {_BAD_PARENT}; fi
chmod "$mode" /proc/self/fd/3 && size=$(stat -L -c %s /proc/self/fd/3) && exec 3>&- && mv -fT -- "$tmp" "$path" \
  && echo "$size"
"""

_READ = rf"""
[ -e "$1" ] || exit {_MISSING}
[ -f "$1" ] || exit {_NOT_A_FILE}
exec cat -- "$1"
"""


def check_mode(mode: int) -> int:
    if mode > 0o7777:
        raise invalid_argument("INVALID_FIELD", "mode must be permission bits no larger than 0o7777", field="mode")
    return mode or DEFAULT_MODE


def check_content(content: bytes) -> bytes:
    if len(content) > MAX_FILE_BYTES:
        raise invalid_argument(
            "INVALID_FIELD",
            f"content must be at most {MAX_FILE_BYTES} bytes; write larger data in parts or fetch it from "
            "inside the sandbox",
            field="content",
        )
    return content


async def write_file(driver: Driver, native_id: str, path: str, content: bytes, mode: int) -> int:
    """Writes content to path with the given permission bits; returns the file's size."""

    def place(staged: str) -> list[str]:
        return ["sh", "-c", _PLACE, "place", staged, path, f"{mode:o}"]

    if driver.accepts_stdin:
        result = await driver.run_with_stdin(native_id, place("-"), content)
    else:
        staged = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        await driver.upload(native_id, staged, content)
        result = await driver.run(native_id, place(staged))
    if result.code == _IS_A_DIRECTORY:
        raise failed_precondition("PATH_IS_A_DIRECTORY", f"{path} is a directory; name a file inside it", path=path)
    if result.code == _BAD_PARENT:
        raise failed_precondition(
            "PARENT_NOT_WRITABLE", f"cannot create {path}: a parent is not a writable directory", path=path
        )
    # What the sandbox answers is its own business, not ours: an exit code or a size that is not the
    # script's is a failure in that sandbox (its filesystem, a replaced tool), never a server error.
    size = result.stdout.strip()
    if result.code != 0 or not size.isdigit() or len(size) > 19:
        raise failed_precondition(
            "FILE_WRITE_FAILED", f"writing {path} failed inside the sandbox (exit code {result.code})", path=path
        )
    return int(size)


async def read_file(driver: Driver, native_id: str, path: str) -> AsyncIterator[tuple[int, bytes]]:
    """Yields (offset, chunk) pairs of the regular file at path, chunks of at most READ_CHUNK_BYTES."""
    offset = 0
    async with closing(driver.stream(native_id, ["sh", "-c", _READ, "read", path])) as process:
        async for item in process:
            if isinstance(item, Exit):
                if item.code == _MISSING:
                    raise not_found("FILE_NOT_FOUND", f"{path} does not exist", path=path)
                if item.code == _NOT_A_FILE:
                    raise failed_precondition("NOT_A_REGULAR_FILE", f"{path} is not a regular file", path=path)
                if item.code != 0:
                    raise failed_precondition(
                        "FILE_READ_FAILED", f"reading {path} failed inside the sandbox (exit code {item.code})"
                    )
                return
            if item.fd != 1:
                continue
            for start in range(0, len(item.data), READ_CHUNK_BYTES):
                chunk = item.data[start : start + READ_CHUNK_BYTES]
                yield offset, chunk
                offset += len(chunk)
