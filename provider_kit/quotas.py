"""Per-tenant quotas, counted from the provider's own records: no replica keeps a count, and replicas do not
coordinate.

A new sandbox is admitted after it was created, by listing its tenant's sandboxes. Admission is safe without a
lock: a replica keeps a sandbox only after a listing that holds the sandbox itself and at most the quota. Of the
sandboxes kept, the one whose deciding listing came last saw every other kept one (each was created before its
own listing), so at most the quota are ever kept, whatever the interleaving. To keep the earliest rather than
refuse every racer, a sandbox ranked beyond the quota (by create time, then native id: every replica sorts
alike) is deleted at once, and one ranked within it lists again after the others had time to decide.
"""

from __future__ import annotations

import asyncio
import logging

from provider_kit.driver import Driver, SandboxRecord
from provider_kit.errors import resource_exhausted

log = logging.getLogger(__name__)
PAGE = 500
# How often, and how far apart, a sandbox ranked within the quota lists again while racers decide.
ADMIT_LISTINGS = 10
ADMIT_WAIT_SECONDS = 0.2


async def tenant_sandboxes(driver: Driver, tenant: str) -> list[SandboxRecord]:
    """Every sandbox of tenant, in the provider's own records."""
    found: list[SandboxRecord] = []
    after = ""
    while True:
        page = await driver.list_sandboxes(tenant, {}, after, PAGE)
        found.extend(page)
        if len(page) < PAGE:
            return found
        after = page[-1].native_id


async def admit_sandbox(driver: Driver, record: SandboxRecord, maximum: int) -> None:
    """Keeps the new sandbox `record` if its tenant has at most `maximum` sandboxes with it; otherwise deletes it
    and raises RESOURCE_EXHAUSTED (QUOTA_EXCEEDED). maximum 0: no quota."""
    if maximum <= 0:
        return
    for listing in range(ADMIT_LISTINGS):
        others = [r for r in await tenant_sandboxes(driver, record.tenant) if r.native_id != record.native_id]
        if len(others) < maximum:
            return
        ahead = [r for r in others if (r.create_time, r.native_id) < (record.create_time, record.native_id)]
        if len(ahead) >= maximum or listing == ADMIT_LISTINGS - 1:
            break
        await asyncio.sleep(ADMIT_WAIT_SECONDS)
    try:
        await driver.delete(record.native_id)
    except Exception:  # left behind, it still counts against the quota, and the reaper deletes it at its expiry
        log.warning("could not delete a sandbox over its tenant's quota", exc_info=True)
    log.info("sandbox quota reached", extra={"tenant": record.tenant, "maximum": maximum})
    raise resource_exhausted(
        "QUOTA_EXCEEDED",
        f"this tenant already has {maximum} sandboxes, its quota: delete one first "
        "(the operator sets the quota with SANDBOX_MAX_SANDBOXES_PER_TENANT)",
        quota="sandboxes",
        limit=str(maximum),
    )
