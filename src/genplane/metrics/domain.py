"""What the domain records: generations ended, provider attempts, credits moved.

Each is called once, at the single place the event happens (``generations.lifecycle``,
``credits.ledger``, the worker's attempt records). Generations and credits change inside a
transaction that may still roll back (a lost race, a conflict, a crash before commit), so
those are counted when, and only if, that transaction commits: the counters then agree with
the rows and the ledger, and a job run again after a failed commit is not counted twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from genplane.clock import as_utc, utcnow
from genplane.metrics.instruments import (
    CREDITS_CHARGED,
    CREDITS_REFUNDED,
    CREDITS_RESERVED,
    GENERATIONS_ENDED,
    PROVIDER_ATTEMPT_SECONDS,
    recording_failed,
)

#: The session's ``info`` entry holding what to record once its transaction commits.
_PENDING = "genplane.metrics.on_commit"
#: The provider label when no provider ran (a generation failed before its chain started).
NO_PROVIDER = "none"

_CREDITS = {"reserve": CREDITS_RESERVED, "charge": CREDITS_CHARGED, "refund": CREDITS_REFUNDED}


def generation_ended(s: AsyncSession, model: str, provider: str | None, outcome: str) -> None:
    """Count a generation that ``s``'s transaction moves to a terminal status."""
    _on_commit(s, functools.partial(_count_ended, model, provider or NO_PROVIDER, outcome))


def credits_moved(s: AsyncSession, kind: Literal["reserve", "charge", "refund"], millis: int) -> None:
    """Count credits ``s``'s transaction reserves, charges or refunds (given in milli-credits)."""
    _on_commit(s, functools.partial(_CREDITS[kind].inc, millis / 1000))


def provider_attempt_ended(provider: str, outcome: str, started: datetime) -> None:
    """Observe one provider attempt's duration, from its start until now."""
    seconds = (utcnow() - as_utc(started)).total_seconds()
    try:
        PROVIDER_ATTEMPT_SECONDS.labels(provider, outcome).observe(max(seconds, 0.0))
    except Exception as exc:
        recording_failed("provider_attempt", exc)


def _count_ended(model: str, provider: str, outcome: str) -> None:
    GENERATIONS_ENDED.labels(model, provider, outcome).inc()


def _on_commit(s: AsyncSession, record: Callable[[], object]) -> None:
    """Run ``record`` once ``s``'s transaction has committed (nothing of it runs before)."""
    s.info.setdefault(_PENDING, []).append(record)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        for record in pending:
            try:
                record()
            except Exception as exc:  # the transaction committed: it must not look failed
                recording_failed("on_commit", exc)


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)
