"""Listing helpers for drivers whose list results need a second read per sandbox (Vercel's routes, Daytona's
preview links)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from provider_kit.errors import ApiError

C = TypeVar("C")
R = TypeVar("R")
T = TypeVar("T")
# Second reads in flight at once for one listing: a page of up to 1001 must not become 1001 API calls at once.
READS_AT_ONCE = 16


async def unless_gone(call: Awaitable[T]) -> T | None:
    """The call's result, or None when what it reads no longer exists (NOT_FOUND): a sandbox deleted between
    being listed and being read is left out of the list, not an error."""
    try:
        return await call
    except ApiError as err:
        if err.code != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def first_present(
    candidates: Sequence[C], read: Callable[[C], Awaitable[R | None]], limit: int, at_once: int = READS_AT_ONCE
) -> list[R]:
    """Reads candidates in order, at most at_once at a time, until limit of them are still there (read answers
    None for one that is gone). A page stays full when some of it vanished meanwhile, so the caller's "is
    there more" test (it asks for one more than it returns) still holds."""
    found: list[R] = []
    taken = 0
    while len(found) < limit and taken < len(candidates):
        batch = candidates[taken : taken + min(at_once, limit - len(found))]
        taken += len(batch)
        found.extend(r for r in await asyncio.gather(*(read(c) for c in batch)) if r is not None)
    return found
