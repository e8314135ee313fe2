"""WriteFile and ReadFile on every provider: byte-exact, atomic, with the same errors everywhere."""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest

from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client, expect_error


async def shell(client: Client, sandbox: str, script: str) -> str:
    result = await client.run(sandbox, ["sh", "-c", script])
    assert result.finished is not None and result.finished.exit_code == 0, bytes(result.stderr)
    return bytes(result.stdout).decode()


async def test_written_file_is_byte_exact_with_parents_mode_and_owner(client: Client, sandbox: str) -> None:
    content = bytes(range(256)) * 4096 + os.urandom(3_000_000)  # every byte value, then 3 MB of noise
    written = await client.write_file(sandbox, "/tmp/new/nested/dir/data.bin", content)
    assert (written.path, written.size) == ("/tmp/new/nested/dir/data.bin", len(content))

    listing = await shell(
        client, sandbox, "cd /tmp/new/nested/dir && stat -c '%a %U %s' data.bin && sha256sum data.bin && ls -A"
    )
    facts, digest, files = listing.splitlines()[0], listing.splitlines()[1], listing.splitlines()[2:]
    assert facts == f"644 {(await shell(client, sandbox, 'id -un')).strip()} {len(content)}"
    assert digest.split()[0] == hashlib.sha256(content).hexdigest()
    assert files == ["data.bin"]  # no temporary file left beside it
    assert await shell(client, sandbox, "ls -A /tmp | grep -c sandbox-upload || true") == "0\n"

    chunks = await client.read_file(sandbox, "/tmp/new/nested/dir/data.bin")
    assert b"".join(c.data for c in chunks) == content
    assert [c.offset for c in chunks] == [sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
    assert max(len(c.data) for c in chunks) <= 1024 * 1024


async def test_executable_script_and_replacing_a_file(client: Client, sandbox: str) -> None:
    await client.write_file(sandbox, "/tmp/tool.sh", b"#!/bin/sh\necho tool says $1\n", mode=0o755)
    result = await client.run(sandbox, ["/tmp/tool.sh", "hi"])
    assert bytes(result.stdout) == b"tool says hi\n"

    await client.write_file(sandbox, "/tmp/notes.txt", b"a much longer first version\n")
    replaced = await client.write_file(sandbox, "/tmp/notes.txt", b"short\n", mode=0o600)
    assert replaced.size == 6
    assert await shell(client, sandbox, "stat -c %a /tmp/notes.txt; cat /tmp/notes.txt") == "600\nshort\n"

    empty = await client.write_file(sandbox, "/tmp/empty", b"")
    assert empty.size == 0
    assert await client.read_file(sandbox, "/tmp/empty") == []


async def test_large_file_streams_back_in_chunks(client: Client, sandbox: str) -> None:
    size = 25 * 1000 * 1000
    expected = (await shell(client, sandbox, f"head -c {size} /dev/urandom > /tmp/big && sha256sum /tmp/big")).split()[
        0
    ]
    digest, total, chunks = hashlib.sha256(), 0, 0
    async for chunk in client.stub.ReadFile(
        pb.ReadFileRequest(sandbox=sandbox, path="/tmp/big"), metadata=client.metadata
    ):
        assert chunk.offset == total
        digest.update(chunk.data)
        total += len(chunk.data)
        chunks += 1
    assert (total, digest.hexdigest()) == (size, expected)
    assert chunks >= 24


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("read a missing file", grpc.StatusCode.NOT_FOUND, "FILE_NOT_FOUND"),
        ("read a directory", grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_REGULAR_FILE"),
        ("write over a directory", grpc.StatusCode.FAILED_PRECONDITION, "PATH_IS_A_DIRECTORY"),
        ("write under a regular file", grpc.StatusCode.FAILED_PRECONDITION, "PARENT_NOT_WRITABLE"),
        ("relative path", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
        ("mode beyond permission bits", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
        ("content over 10 MiB", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
    ],
)
async def test_file_errors_are_clear_and_change_nothing(
    case: str, code: grpc.StatusCode, reason: str, client: Client, sandbox: str
) -> None:
    await shell(client, sandbox, "mkdir -p /tmp/keep && echo precious > /tmp/keep/file")
    calls = {
        "read a missing file": lambda: client.read_file(sandbox, "/tmp/keep/missing"),
        "read a directory": lambda: client.read_file(sandbox, "/tmp/keep"),
        # Megabytes the placing command never reads (it refuses first): the call must still end cleanly.
        "write over a directory": lambda: client.write_file(sandbox, "/tmp/keep", os.urandom(5 << 20)),
        "write under a regular file": lambda: client.write_file(sandbox, "/tmp/keep/file/child", b"x"),
        "relative path": lambda: client.write_file(sandbox, "tmp/keep/file", b"x"),
        "mode beyond permission bits": lambda: client.write_file(sandbox, "/tmp/keep/file", b"x", mode=0o17777),
        "content over 10 MiB": lambda: client.write_file(sandbox, "/tmp/keep/file", b"x" * (10 * 1024 * 1024 + 1)),
    }
    await expect_error(calls[case](), code, reason)
    # The directory and the file in it are untouched, and no staging file is left in /tmp.
    assert await shell(client, sandbox, "cat /tmp/keep/file; ls -A /tmp/keep; ls -A /tmp | grep -c upload || true") == (
        "precious\nfile\n0\n"
    )
