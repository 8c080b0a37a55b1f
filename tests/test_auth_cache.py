"""The verified-key cache: in-process changes apply at once, others within the TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import update

from genplane.accounts import service as accounts
from genplane.clock import utcnow
from genplane.db.models import ApiKey


async def _revoke_behind_the_cache(harness: Any, key_id: str) -> None:
    """What another process (the CLI) does: change the row without touching our caches."""
    async with harness.services.db.write() as s:
        await s.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))


async def test_revocation_in_process_applies_immediately(harness_factory: Callable[..., Any]) -> None:
    harness = await harness_factory(auth_cache_seconds=60)
    caller = await harness.caller()
    assert (await caller.get("/v1/status")).status_code == 200
    assert await accounts.revoke_key(harness.services.db, caller.key_id)
    r = await caller.get("/v1/status")
    assert r.status_code == 401
    assert r.json()["error"] == "bse_invalid_api_key"


async def test_account_deletion_in_process_applies_immediately(harness_factory: Callable[..., Any]) -> None:
    harness = await harness_factory(auth_cache_seconds=60)
    caller = await harness.caller()
    assert (await caller.get("/v1/status")).status_code == 200
    assert await accounts.delete_account(harness.services.db, caller.account_id)
    r = await caller.get("/v1/status")
    assert r.json()["error"] == "bse_account_not_found"


async def test_change_by_another_process_is_seen_within_the_ttl(harness_factory: Callable[..., Any]) -> None:
    harness = await harness_factory(auth_cache_seconds=0.3)
    caller = await harness.caller()
    assert (await caller.get("/v1/status")).status_code == 200
    await _revoke_behind_the_cache(harness, caller.key_id)
    assert (await caller.get("/v1/status")).status_code == 200  # still remembered
    await asyncio.sleep(0.4)
    r = await caller.get("/v1/status")
    assert r.status_code == 401
    assert r.json()["error"] == "bse_invalid_api_key"


async def test_zero_ttl_reads_the_key_every_time(harness_factory: Callable[..., Any]) -> None:
    harness = await harness_factory(auth_cache_seconds=0)
    caller = await harness.caller()
    assert (await caller.get("/v1/status")).status_code == 200
    await _revoke_behind_the_cache(harness, caller.key_id)
    assert (await caller.get("/v1/status")).status_code == 401


async def test_cached_key_still_expires_on_time(harness_factory: Callable[..., Any]) -> None:
    """Expiry is checked against the remembered row on every request, not at caching time."""
    from datetime import timedelta

    harness = await harness_factory(auth_cache_seconds=60)
    owner = await harness.caller()
    short = await harness.key_for(owner, preset="full_access", expires_at=utcnow() + timedelta(seconds=0.5))
    assert (await short.get("/v1/status")).status_code == 200
    await asyncio.sleep(0.6)
    r = await short.get("/v1/status")
    assert r.status_code == 401
    assert r.json()["error"] == "bse_invalid_api_key"
