"""Streamed output arrives byte-exact: binary data, interleaved streams, and 100 MB."""

from __future__ import annotations

import hashlib

from sandbox.v1 import sandbox_pb2 as pb
from tests.client import Client


async def test_binary_output_is_byte_exact(client: Client, sandbox: str) -> None:
    # Every byte value, invalid UTF-8 and NULs included, on both streams.
    script = (
        "head -c 3000000 /dev/urandom > /tmp/bin && cat /tmp/bin && printf '\\000\\377\\376' >&2 && cat /tmp/bin >&2"
    )
    result = await client.run(sandbox, ["sh", "-c", script])
    digest = await client.run(sandbox, ["sha256sum", "/tmp/bin"])
    expected = bytes(digest.stdout).split()[0].decode()
    assert len(result.stdout) == 3_000_000
    assert hashlib.sha256(result.stdout).hexdigest() == expected
    assert bytes(result.stderr[:3]) == b"\x00\xff\xfe"
    assert hashlib.sha256(result.stderr[3:]).hexdigest() == expected


async def test_every_byte_value_round_trips(client: Client, sandbox: str) -> None:
    printf_all = "".join(f"\\{i:03o}" for i in range(256))
    result = await client.run(sandbox, ["printf", printf_all])
    assert bytes(result.stdout) == bytes(range(256))


async def test_100_megabytes_of_output(client: Client, sandbox: str) -> None:
    size = 100 * 1000 * 1000
    prepared = await client.run(sandbox, ["sh", "-c", f"head -c {size} /dev/urandom > /tmp/big && sha256sum /tmp/big"])
    expected = bytes(prepared.stdout).split()[0].decode()
    digest = hashlib.sha256()
    received = 0
    finished = None
    async for event in client.run_stream(sandbox, ["cat", "/tmp/big"]):
        kind = event.WhichOneof("event")
        if kind == "output":
            assert event.output.offset == received
            digest.update(event.output.data)
            received += len(event.output.data)
        elif kind == "finished":
            finished = event.finished
    assert received == size
    assert digest.hexdigest() == expected
    assert finished is not None and finished.state == pb.Execution.STATE_SUCCEEDED
    assert finished.stdout_bytes == size
