"""What a sandbox answers about its own files is hostile input: tools replaced inside it (here `stat` and
`cat`, which the file scripts use) make WriteFile and ReadFile fail cleanly, never with INTERNAL."""

from __future__ import annotations

import grpc

from tests.client import Client, expect_error
from tests.docker_only import client, stack  # noqa: F401  (Docker-only fixtures)


async def test_replaced_tools_give_clear_errors(client: Client, sandbox: str) -> None:  # noqa: F811
    # /usr/local/bin comes before /usr/bin on PATH: whoever is root in the sandbox can shadow any tool.
    fake_stat = b"#!/bin/sh\necho 'not a size'\n"
    fake_cat = b"#!/bin/sh\necho partial\nexit 9\n"
    await client.write_file(sandbox, "/tmp/fake-stat", fake_stat, mode=0o755)
    await client.write_file(sandbox, "/tmp/fake-cat", fake_cat, mode=0o755)
    await client.run(sandbox, ["cp", "/tmp/fake-stat", "/usr/local/bin/stat"])
    await expect_error(
        client.write_file(sandbox, "/tmp/a.txt", b"hello"), grpc.StatusCode.FAILED_PRECONDITION, "FILE_WRITE_FAILED"
    )
    await client.run(sandbox, ["cp", "/tmp/fake-cat", "/usr/local/bin/cat"])
    await expect_error(
        client.read_file(sandbox, "/etc/hostname"), grpc.StatusCode.FAILED_PRECONDITION, "FILE_READ_FAILED"
    )
