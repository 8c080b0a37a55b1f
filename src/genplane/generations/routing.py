"""Provider routing: the order in which a generation's providers are tried.

An explicit chain is the client's to choose. ``fastest`` (the default for models with
several providers) ranks the configured providers per model from their recent attempts
(:mod:`genplane.providers.stats`): the expected time to a usable result is the p95
latency of successful attempts divided by the success rate, and made worse by the
share of paid work that was thrown away. Providers without enough history keep
their catalogue position among the others, so a new provider is tried rather than
starved.

A provider whose state is not routable (its breaker is open: health shows it
``degraded``) is left out, unless every candidate is. The state comes from the shared
attempt records, so every process of a deployment agrees, and the stats behind it are
cached for a few seconds so a create costs no extra query; the state itself is judged
at each call, so a cool-off ends on time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from genplane.catalog.loader import ModelEntry
from genplane.clock import utcnow
from genplane.db.engine import Database
from genplane.providers.stats import MIN_ATTEMPTS, ModelRecord, ProviderStats, recent_stats

CACHE_SECONDS = 5.0


def expected_ms(record: ModelRecord) -> float | None:
    """Lower is better; None without enough history to judge."""
    total = record.successes + record.failures
    if total < MIN_ATTEMPTS:
        return None
    if record.p95_latency_ms is None:  # never succeeded in the window
        return float("inf")
    paid = record.successes + record.wasted
    wasted_rate = record.wasted / paid if paid else 0.0
    return record.p95_latency_ms / max(record.successes / total, 0.01) * (1.0 + wasted_rate)


@dataclass(frozen=True)
class _Snapshot:
    taken: float
    stats: dict[str, ProviderStats]


class ProviderRanker:
    def __init__(self, db: Database, cache_seconds: float = CACHE_SECONDS) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._snapshot: _Snapshot | None = None

    def invalidate(self) -> None:
        self._snapshot = None

    async def _stats(self, providers: Collection[str]) -> dict[str, ProviderStats]:
        """Stats of ``providers`` and of every provider asked about before, reloaded when stale."""
        snap = self._snapshot
        fresh = snap is not None and time.monotonic() - snap.taken < self.cache_seconds
        if snap is not None and fresh and set(providers) <= snap.stats.keys():
            return snap.stats
        wanted = set(providers) | (snap.stats.keys() if snap is not None else set())
        async with self.db.read() as s:
            stats = await recent_stats(s, wanted)
        self._snapshot = _Snapshot(time.monotonic(), stats)
        return stats

    async def breaker_open(self, providers: Iterable[str] | None = None) -> set[str]:
        """Providers routing skips now: of ``providers``, or of all with recent attempts."""
        now = utcnow()
        if providers is None:
            async with self.db.read() as s:
                stats = await recent_stats(s, None, now)
        else:
            stats = await self._stats(list(providers))
        return {p for p, st in stats.items() if not st.state(now).routable}

    async def rank(self, model: ModelEntry, candidates: list[str]) -> list[str]:
        """``candidates`` (in catalogue order) from most to least promising.

        Providers whose breaker is open are left out, unless all are open: then the
        whole ranked list is returned, since trying beats refusing outright.
        """
        if not candidates:
            return []
        stats = await self._stats(candidates)
        now = utcnow()
        skipped = {p for p in candidates if not stats[p].state(now).routable}
        empty = ModelRecord()
        scores = {p: expected_ms(stats[p].models.get(model.model_identifier, empty)) for p in candidates}
        known = [s for s in scores.values() if s is not None and s != float("inf")]
        neutral = statistics.median(known) if known else 0.0
        position = {p: i for i, p in enumerate(candidates)}

        def key(p: str) -> tuple[bool, float, int]:
            score = scores[p]
            return (p in skipped, neutral if score is None else score, position[p])

        ranked = sorted(candidates, key=key)
        routable = [p for p in ranked if p not in skipped]
        return routable or ranked
