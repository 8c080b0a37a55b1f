"""Provider health from recorded attempts over a rolling window."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from genplane.clock import utcnow
from genplane.db.engine import Database
from genplane.db.models import ProviderAttempt

WINDOW_SECONDS = 900


def classify(total: int, failures: int, last_ok: bool | None) -> str:
    if total == 0:
        return "unknown"
    rate = failures / total
    if rate <= 0.2:
        return "healthy"
    return "recovering" if last_ok else "degraded"


async def provider_health(db: Database, provider_ids: list[str]) -> list[dict[str, Any]]:
    since = utcnow() - timedelta(seconds=WINDOW_SECONDS)
    async with db.read() as s:
        rows = (
            await s.execute(
                select(ProviderAttempt.provider, ProviderAttempt.outcome, func.count())
                .where(ProviderAttempt.started_at >= since, ProviderAttempt.provider.in_(provider_ids))
                .group_by(ProviderAttempt.provider, ProviderAttempt.outcome)
            )
        ).all()
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
    counts: dict[str, dict[str, int]] = {p: {} for p in provider_ids}
    for provider, outcome, n in rows:
        counts[provider][outcome] = int(n)
    out = []
    for provider in provider_ids:
        c = counts[provider]
        successes, failures = c.get("used", 0), c.get("failed", 0)
        total = successes + failures
        last_outcome = last.get(provider)
        out.append(
            {
                "provider": provider,
                "status": classify(total, failures, None if last_outcome is None else last_outcome == "used"),
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
