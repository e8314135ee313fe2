"""Helpers for async streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.asynccontextmanager
async def closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Closes an async iterator on exit, even one abandoned half-way (async generators hold connections open
    until closed; plain iterators need nothing)."""
    try:
        yield iterator
    finally:
        await aclose(iterator)


async def aclose(iterator: AsyncIterator[T]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def with_keepalive(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """Yields source's items, and None whenever source has been silent for `interval` seconds."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await aclose(source)
