"""What recent attempts say about each provider, and the one rule that judges it.

The health endpoint and ``fastest`` routing both read :func:`recent_stats` and both judge
with :meth:`ProviderStats.state`, so a provider routing skips is the provider health calls
``degraded``, and no other: two definitions with their own windows and thresholds told
tenants "healthy" about a provider the router had stopped using.

The rule, on the newest attempts of the window:

- ``degraded`` (the breaker is open, routing skips it): the newest ``BREAKER_FAILURES``
  decisive attempts all failed, or at least half of at least ``MIN_ATTEMPTS`` failed and the
  newest of them too; and that last failure is under ``BREAKER_COOLDOWN_SECONDS`` old.
  The first catches a good provider that just went down (100 successes, then 5 failures),
  the second one that fails too often to be worth a try;
- ``recovering`` (routed): the cool-off of an open breaker has passed and no attempt has
  succeeded since (it is on trial: the next attempt closes or reopens it), or more than
  ``HEALTHY_FAILURE_RATE`` of the decisive attempts failed;
- ``healthy`` otherwise, also with no attempts at all: ``unknown`` is for a provider that is
  not configured here, since with no traffic it would tell every tenant that nobody used it.

Attempts count from SQL over bounded ranges of the ``(provider, started_at)`` and
``(account_id, started_at)`` indexes: the newest ``SAMPLE_SIZE`` attempts of each provider
within ``WINDOW_SECONDS``, never a scan of the table, whose history the janitor keeps for
weeks. "Newest" among them is by id: an attempt's row is written when it ends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, func, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import as_utc, utcnow
from genplane.contract.status import AttemptOutcome
from genplane.db.models import ProviderAttempt

WINDOW_SECONDS = 900
SAMPLE_SIZE = 200
MIN_ATTEMPTS = 3
HEALTHY_FAILURE_RATE = 0.2
TRIP_FAILURE_RATE = 0.5
BREAKER_FAILURES = 5
BREAKER_COOLDOWN_SECONDS = 30.0

_Query = Select[*tuple[Any, ...]]
_USED, _FAILED, _DISCARDED = AttemptOutcome.USED, AttemptOutcome.FAILED, AttemptOutcome.DISCARDED


class ProviderState(StrEnum):
    """A provider's status on the wire (``/v1/health/inference/providers``)."""

    HEALTHY = "healthy"
    RECOVERING = "recovering"
    DEGRADED = "degraded"
    UNKNOWN = "unknown"  # not configured here, so never routed to

    @property
    def routable(self) -> bool:
        """Whether ``fastest`` routing tries the provider (``degraded``: only when all are)."""
        return self in (ProviderState.HEALTHY, ProviderState.RECOVERING)


@dataclass(frozen=True)
class ModelRecord:
    """One provider's attempts for one model: what ``fastest`` scores."""

    successes: int = 0
    failures: int = 0
    wasted: int = 0  # finished after the generation had ended: paid for, thrown away
    p95_latency_ms: float | None = None  # of the successes


@dataclass(frozen=True)
class ProviderStats:
    """One provider's newest attempts in the window, all models together."""

    provider: str
    successes: int = 0
    failures: int = 0
    wasted: int = 0
    consecutive_failures: int = 0  # failures newer than the newest success
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    models: Mapping[str, ModelRecord] = field(default_factory=dict)

    @property
    def decisive(self) -> int:
        """Attempts that ended in a success or a failure (not canceled, not discarded)."""
        return self.successes + self.failures

    @property
    def failure_rate(self) -> float:
        return self.failures / self.decisive if self.decisive else 0.0

    @property
    def last_outcome(self) -> AttemptOutcome | None:
        if self.consecutive_failures:
            return AttemptOutcome.FAILED
        return AttemptOutcome.USED if self.successes else None

    def _tripped(self) -> bool:
        if self.consecutive_failures >= BREAKER_FAILURES:
            return True
        return (
            self.consecutive_failures > 0
            and self.decisive >= MIN_ATTEMPTS
            and self.failure_rate >= TRIP_FAILURE_RATE
        )

    def breaker_open(self, now: datetime) -> bool:
        if not self._tripped() or self.last_failure_at is None:
            return False
        return (now - as_utc(self.last_failure_at)).total_seconds() < BREAKER_COOLDOWN_SECONDS

    def state(self, now: datetime) -> ProviderState:
        if self.breaker_open(now):
            return ProviderState.DEGRADED
        if self._tripped() or self.failure_rate > HEALTHY_FAILURE_RATE:
            return ProviderState.RECOVERING
        return ProviderState.HEALTHY


@dataclass(frozen=True)
class Window:
    """The attempts started in ``[start, end]``.

    Closed on both sides: with only a lower bound, SQLite answers a grouping by provider
    by walking the whole ``(provider, started_at)`` index rather than a range of the
    ``started_at`` one (``SCAN ... USING COVERING INDEX``).
    """

    start: datetime
    end: datetime

    @classmethod
    def ending(cls, now: datetime | None = None) -> Window:
        end = now or utcnow()
        return cls(end - timedelta(seconds=WINDOW_SECONDS), end)

    def params(self) -> dict[str, datetime]:
        return {"window_start": self.start, "window_end": self.end}


_STARTED = ProviderAttempt.__table__.c.started_at
_IN_WINDOW = _STARTED.between(
    bindparam("window_start", type_=_STARTED.type), bindparam("window_end", type_=_STARTED.type)
)


def _newest_attempts_of(provider: str) -> _Query:
    """One range of ``ix_attempts_provider_started``, newest first, cut at ``SAMPLE_SIZE``."""
    a = ProviderAttempt
    return (
        select(a.id, a.provider, a.model_identifier, a.outcome, a.latency_ms, a.started_at, a.finished_at)
        .where(a.provider == provider, _IN_WINDOW, a.outcome.in_((_USED, _FAILED, _DISCARDED)))
        .order_by(a.started_at.desc())
        .limit(SAMPLE_SIZE)
    )


@lru_cache(maxsize=64)
def stats_query(providers: tuple[str, ...]) -> _Query:
    """Per (provider, model): counts, the failures after the provider's newest success, the
    newest success and failure, and the p95 latency of the successes: the lowest with more
    than 95% of them at or below it (the ``floor(0.95 n) + 1``-th of ``n``).

    Built once per set of providers (building it costs more than SQLite running it); the
    window is bound at execution, from :meth:`Window.params`."""
    arms = [select(_newest_attempts_of(p).subquery()) for p in providers]
    recent = (union_all(*arms) if len(arms) > 1 else arms[0]).subquery("recent")
    r = recent.c
    timed = and_(r.outcome == _USED, r.latency_ms.is_not(None))
    marked = select(
        r.id,
        r.provider,
        r.model_identifier,
        r.outcome,
        r.latency_ms,
        func.coalesce(r.finished_at, r.started_at).label("ended_at"),
        timed.label("timed"),
        func.max(case((r.outcome == _USED, r.id))).over(partition_by=r.provider).label("last_success_id"),
        func.cume_dist()
        .over(partition_by=(r.provider, r.model_identifier, timed), order_by=r.latency_ms)
        .label("latency_share"),
    ).subquery("marked")
    m = marked.c
    since_success = and_(m.outcome == _FAILED, or_(m.last_success_id.is_(None), m.id > m.last_success_id))
    return select(
        m.provider,
        m.model_identifier,
        func.count(case((m.outcome == _USED, 1))).label("successes"),
        func.count(case((m.outcome == _FAILED, 1))).label("failures"),
        func.count(case((m.outcome == _DISCARDED, 1))).label("wasted"),
        func.count(case((since_success, 1))).label("consecutive_failures"),
        func.max(case((m.outcome == _USED, m.ended_at))).label("last_success_at"),
        func.max(case((m.outcome == _FAILED, m.ended_at))).label("last_failure_at"),
        func.min(case((and_(m.timed, m.latency_share > 0.95), m.latency_ms))).label("p95_latency_ms"),
    ).group_by(m.provider, m.model_identifier)


def _active_providers() -> _Query:
    """Providers with an attempt in the window: one range of ``ix_attempts_started``."""
    a = ProviderAttempt
    return select(a.provider).where(_IN_WINDOW).group_by(a.provider)


def _account_counts(account_id: str) -> _Query:
    """One account's attempts per provider and outcome: one range of ``ix_attempts_account_started``."""
    a = ProviderAttempt
    return (
        select(a.provider, a.outcome, func.count())
        .where(a.account_id == account_id, _IN_WINDOW)
        .group_by(a.provider, a.outcome)
    )


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two times, in UTC (SQLite hands them back naive)."""
    known = [as_utc(t) for t in (a, b) if t is not None]
    return max(known) if known else None


async def recent_stats(
    session: AsyncSession, providers: Collection[str] | None = None, now: datetime | None = None
) -> dict[str, ProviderStats]:
    """Stats of ``providers`` (every one, empty when it has no attempts), or of those with
    attempts in the window when None."""
    window = Window.ending(now).params()
    if providers is None:
        providers = list((await session.scalars(_active_providers(), window)).all())
    if not providers:
        return {}
    per_model: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in (await session.execute(stats_query(tuple(sorted(set(providers)))), window)).all():
        per_model[row.provider][row.model_identifier] = row
    out = {}
    for provider in providers:
        rows = per_model.get(provider, {})
        last_success = last_failure = None
        for row in rows.values():
            last_success = _latest(last_success, row.last_success_at)
            last_failure = _latest(last_failure, row.last_failure_at)
        out[provider] = ProviderStats(
            provider=provider,
            successes=sum(r.successes for r in rows.values()),
            failures=sum(r.failures for r in rows.values()),
            wasted=sum(r.wasted for r in rows.values()),
            consecutive_failures=sum(r.consecutive_failures for r in rows.values()),
            last_success_at=last_success,
            last_failure_at=last_failure,
            models={
                model: ModelRecord(
                    r.successes,
                    r.failures,
                    r.wasted,
                    None if r.p95_latency_ms is None else float(r.p95_latency_ms),
                )
                for model, r in rows.items()
            },
        )
    return out


@dataclass(frozen=True)
class OutcomeCounts:
    """One account's decisive attempts with one provider in the window."""

    successes: int = 0
    failures: int = 0

    @property
    def total(self) -> int:
        return self.successes + self.failures

    @property
    def failure_rate(self) -> float:
        return self.failures / self.total if self.total else 0.0


async def account_counts(
    session: AsyncSession, account_id: str, now: datetime | None = None
) -> dict[str, OutcomeCounts]:
    """``account_id``'s own attempts per provider: what a tenant may be shown of them."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    rows = await session.execute(_account_counts(account_id), Window.ending(now).params())
    for provider, outcome, n in rows.all():
        counts[provider][outcome] = int(n)
    return {
        provider: OutcomeCounts(by_outcome.get(_USED, 0), by_outcome.get(_FAILED, 0))
        for provider, by_outcome in counts.items()
    }
