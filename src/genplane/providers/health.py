"""Provider health from recorded attempts over a rolling window.

Attempts are tenants' activity: how many generations an account ran, and when, is
its own business. So the one thing drawn from everyone's attempts is a coarse status;
every count a caller sees (and the failure rate made from them) is from the
attempts of its own account's generations.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import utcnow
from genplane.db.engine import Database
from genplane.db.models import ProviderAttempt

WINDOW_SECONDS = 900


def classify(total: int, failures: int, last_ok: bool | None) -> str:
    """A configured provider's status; with no attempts it is ``healthy``, since
    ``unknown`` would tell every tenant that nobody used the provider lately."""
    if total == 0:
        return "healthy"
    rate = failures / total
    if rate <= 0.2:
        return "healthy"
    return "recovering" if last_ok else "degraded"


async def _counts(
    s: AsyncSession, provider_ids: list[str], since: datetime, account_id: str | None
) -> dict[str, dict[str, int]]:
    """Attempts per provider and outcome in the window; one account's when ``account_id``."""
    query = (
        select(ProviderAttempt.provider, ProviderAttempt.outcome, func.count())
        .where(ProviderAttempt.started_at >= since, ProviderAttempt.provider.in_(provider_ids))
        .group_by(ProviderAttempt.provider, ProviderAttempt.outcome)
    )
    if account_id is not None:
        query = query.where(ProviderAttempt.account_id == account_id)
    counts: dict[str, dict[str, int]] = {p: {} for p in provider_ids}
    for provider, outcome, n in (await s.execute(query)).all():
        counts[provider][outcome] = int(n)
    return counts


async def provider_health(db: Database, provider_ids: list[str], account_id: str) -> list[dict[str, Any]]:
    """Each provider's shared status, with ``account_id``'s own attempt counts."""
    since = utcnow() - timedelta(seconds=WINDOW_SECONDS)
    async with db.read() as s:
        everyone = await _counts(s, provider_ids, since, None)
        own = await _counts(s, provider_ids, since, account_id)
        last = dict(
            (
                await s.execute(
                    select(ProviderAttempt.provider, ProviderAttempt.outcome).where(
                        ProviderAttempt.id.in_(
                            select(func.max(ProviderAttempt.id))
                            .where(
                                ProviderAttempt.started_at >= since,
                                ProviderAttempt.outcome.in_(("used", "failed")),
                            )
                            .group_by(ProviderAttempt.provider)
                        )
                    )
                )
            ).all()
        )
    out = []
    for provider in provider_ids:
        shared = everyone[provider]
        shared_failures = shared.get("failed", 0)
        shared_total = shared.get("used", 0) + shared_failures
        last_outcome = last.get(provider)
        last_ok = None if last_outcome is None else last_outcome == "used"
        status = classify(shared_total, shared_failures, last_ok)
        mine = own[provider]
        successes, failures = mine.get("used", 0), mine.get("failed", 0)
        total = successes + failures
        out.append(
            {
                "provider": provider,
                "status": status,
                "failure_rate": round(failures / total, 4) if total else 0.0,
                "window": {
                    "total_attempts": total,
                    "failures": failures,
                    "successes": successes,
                    "duration_seconds": WINDOW_SECONDS,
                },
            }
        )
    return out
