"""Provider routing: the order in which a generation's providers are tried.

An explicit chain is the client's to choose. ``fastest`` (the default for models with
several providers) ranks the configured providers per model from the recorded
attempts of a rolling window: the expected time to a usable result is the p95
latency of successful attempts divided by the success rate, and made worse by the
share of paid work that was thrown away. Providers without enough history keep
their catalogue position among the others, so a new provider is tried rather than
starved.

A provider's circuit breaker is open while its last ``BREAKER_FAILURES`` attempts
all failed and the newest of them is less than ``BREAKER_COOLDOWN_SECONDS`` old;
``fastest`` skips it then (unless every provider is open). Both are computed from
the shared attempt records, so every process of a deployment agrees, and they are
cached for a few seconds so a create costs no extra query.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from genplane.catalog.loader import ModelEntry
from genplane.clock import as_utc, utcnow
from genplane.db.engine import Database
from genplane.db.models import ProviderAttempt

WINDOW_SECONDS = 3600
MAX_ROWS = 20_000
MIN_SAMPLES = 3
BREAKER_FAILURES = 5
BREAKER_COOLDOWN_SECONDS = 30.0
CACHE_SECONDS = 5.0


@dataclass
class ProviderStats:
    """What a window of attempts says about one provider for one model."""

    successes: int = 0
    failures: int = 0
    wasted: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.successes + self.failures

    @property
    def success_rate(self) -> float:
        return self.successes / self.total if self.total else 0.0

    @property
    def p95_ms(self) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def expected_ms(self) -> float | None:
        """Lower is better; None without enough history to judge."""
        if self.total < MIN_SAMPLES:
            return None
        p95 = self.p95_ms
        if p95 is None:  # never succeeded in the window
            return float("inf")
        paid = self.successes + self.wasted
        wasted_rate = self.wasted / paid if paid else 0.0
        return p95 / max(self.success_rate, 0.01) * (1.0 + wasted_rate)


@dataclass
class _Snapshot:
    taken: float
    stats: dict[tuple[str, str], ProviderStats]
    breaker_open: set[str]


class ProviderRanker:
    def __init__(self, db: Database, cache_seconds: float = CACHE_SECONDS) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._snapshot: _Snapshot | None = None

    def invalidate(self) -> None:
        self._snapshot = None

    async def _current(self) -> _Snapshot:
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.taken < self.cache_seconds:
            return snap
        snap = await self._load()
        self._snapshot = snap
        return snap

    async def _load(self) -> _Snapshot:
        now = utcnow()
        since = now - timedelta(seconds=WINDOW_SECONDS)
        async with self.db.read() as s:
            rows = (
                await s.execute(
                    select(
                        ProviderAttempt.provider,
                        ProviderAttempt.model_identifier,
                        ProviderAttempt.outcome,
                        ProviderAttempt.latency_ms,
                        ProviderAttempt.finished_at,
                    )
                    .where(ProviderAttempt.started_at >= since)
                    .order_by(ProviderAttempt.id.desc())
                    .limit(MAX_ROWS)
                )
            ).all()
        stats: dict[tuple[str, str], ProviderStats] = defaultdict(ProviderStats)
        recent: dict[str, list[tuple[str, float]]] = defaultdict(list)  # newest first
        for provider, model, outcome, latency, finished in rows:
            st = stats[(provider, model)]
            if outcome == "used":
                st.successes += 1
                if latency is not None:
                    st.latencies_ms.append(float(latency))
            elif outcome == "failed":
                st.failures += 1
            elif outcome == "discarded":
                st.wasted += 1
            if outcome in ("used", "failed") and len(recent[provider]) < BREAKER_FAILURES:
                age = (now - as_utc(finished)).total_seconds() if finished is not None else 0.0
                recent[provider].append((outcome, age))
        open_now = {
            provider
            for provider, outcomes in recent.items()
            if len(outcomes) >= BREAKER_FAILURES
            and all(o == "failed" for o, _ in outcomes)
            and outcomes[0][1] < BREAKER_COOLDOWN_SECONDS
        }
        return _Snapshot(time.monotonic(), dict(stats), open_now)

    async def breaker_open(self) -> set[str]:
        return set((await self._current()).breaker_open)

    async def rank(self, model: ModelEntry, candidates: list[str]) -> list[str]:
        """``candidates`` (in catalogue order) from most to least promising.

        Providers whose breaker is open are left out, unless all are open: then the
        whole ranked list is returned, since trying beats refusing outright.
        """
        snap = await self._current()
        empty = ProviderStats()
        scores = {p: snap.stats.get((p, model.model_identifier), empty).expected_ms() for p in candidates}
        known = [s for s in scores.values() if s is not None and s != float("inf")]
        neutral = statistics.median(known) if known else 0.0
        position = {p: i for i, p in enumerate(candidates)}

        def key(p: str) -> tuple[bool, float, int]:
            score = scores[p]
            return (p in snap.breaker_open, neutral if score is None else score, position[p])

        ranked = sorted(candidates, key=key)
        closed = [p for p in ranked if p not in snap.breaker_open]
        return closed or ranked
