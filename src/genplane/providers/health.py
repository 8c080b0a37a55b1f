"""Provider health as a tenant may see it.

Attempts are tenants' activity: how many generations an account ran, and when, is
its own business. So the one thing drawn from everyone's attempts is the shared state
(judged by :mod:`genplane.providers.stats`, the same rule routing obeys); every count a
caller sees, and the failure rate made from them, is from its own account's attempts.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from genplane.clock import utcnow
from genplane.db.engine import Database
from genplane.providers.stats import (
    WINDOW_SECONDS,
    OutcomeCounts,
    ProviderState,
    account_counts,
    recent_stats,
)


@dataclass(frozen=True)
class ProviderHealth:
    provider: str
    state: ProviderState  # shared: from every account's attempts
    own: OutcomeCounts  # the caller's attempts only


@dataclass(frozen=True)
class HealthReport:
    providers: tuple[ProviderHealth, ...]
    window_seconds: int = WINDOW_SECONDS

    @property
    def healthy(self) -> bool:
        """Whether some provider configured here is healthy (an unconfigured one is ``unknown``)."""
        return any(p.state is ProviderState.HEALTHY for p in self.providers)


async def provider_health(
    db: Database, provider_ids: list[str], account_id: str, configured: Collection[str]
) -> HealthReport:
    """Each provider's shared state, with ``account_id``'s own attempt counts."""
    now = utcnow()
    async with db.read() as s:
        stats = await recent_stats(s, [p for p in provider_ids if p in configured], now)
        own = await account_counts(s, account_id, now)
    return HealthReport(
        tuple(
            ProviderHealth(
                provider,
                stats[provider].state(now) if provider in stats else ProviderState.UNKNOWN,
                own.get(provider, OutcomeCounts()),
            )
            for provider in provider_ids
        )
    )
