"""Every state transition of a generation, and the only code that writes its row.

A generation moves ``pending -> processing -> succeeded | failed | canceled``. Each move
here is one conditional UPDATE (the row moves only from the state the move expects), and
the moves that end a generation settle its money and queue its webhook event in the
caller's transaction, so state, ledger and outbox never disagree: a worker that loses a
race to a cancel writes nothing, and a crash between steps leaves nothing half done.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import as_utc, utcnow
from genplane.contract.errors import ApiError, ErrorName
from genplane.contract.status import GenerationStatus
from genplane.credits import ledger
from genplane.db.models import Generation
from genplane.generations.record import event_data
from genplane.generations.request import GenerationRequest
from genplane.ids import new_id
from genplane.webhooks.outbox import emit

ACTIVE = (GenerationStatus.PENDING, GenerationStatus.PROCESSING)


def new_generation(
    account_id: str, req: GenerationRequest, provider_order: list[str], cost: int
) -> Generation:
    """The row of a generation about to be admitted: pending, unclaimed, nothing settled."""
    now = utcnow()
    return Generation(
        id=new_id(),
        account_id=account_id,
        model_identifier=req.model.model_identifier,
        model_type=req.model.model_type,
        status=GenerationStatus.PENDING,
        provider_order=provider_order,
        provider_used=None,
        prediction_id=new_id(),
        **req.spec_values(),
        output_files=None,
        error=None,
        error_code=None,
        provider_errors=None,
        cost_millis=cost,
        credits_settled=False,
        created_at=now,
        started_at=None,
        completed_at=None,
        metrics_total_time=None,
        metrics_predict_time=None,
        lease_owner=None,
        lease_expires_at=None,
        claims=0,
        provider_state=None,
        updated_at=now,
    )


async def admit(s: AsyncSession, gen: Generation, max_inflight: int) -> None:
    """Record a new generation and reserve its cost, unless the account is at its in-flight cap."""
    inflight = await s.scalar(
        select(func.count())
        .select_from(Generation)
        .where(Generation.account_id == gen.account_id, Generation.status.in_(ACTIVE))
    )
    if (inflight or 0) >= max_inflight:
        raise ApiError(
            "bse_concurrency_limit_exceeded",
            f"{inflight} generations are in flight; the limit is {max_inflight}.",
            details={"limit": max_inflight, "retry_after_seconds": 1},
            headers={"Retry-After": "1"},
        )
    s.add(gen)
    await ledger.reserve(s, gen.account_id, gen.id, gen.cost_millis)


async def claim(s: AsyncSession, generation_id: str, owner: str, lease_seconds: float) -> Generation | None:
    """Take the job's lease if nobody holds a live one; the first claim announces the start."""
    now = utcnow()
    res = await s.execute(
        update(Generation)
        .where(
            Generation.id == generation_id,
            Generation.status.in_(ACTIVE),
            or_(Generation.lease_expires_at.is_(None), Generation.lease_expires_at < now),
        )
        .values(
            status=GenerationStatus.PROCESSING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            claims=Generation.claims + 1,
            started_at=func.coalesce(Generation.started_at, now),
            updated_at=now,
        )
    )
    if not res.rowcount:  # type: ignore[attr-defined]
        return None
    gen = await s.get(Generation, generation_id, populate_existing=True)
    if gen is not None and gen.claims == 1:
        await emit(s, gen.account_id, "generation.started", event_data(gen))
    return gen


async def extend_lease(s: AsyncSession, generation_id: str, owner: str, lease_seconds: float) -> bool:
    """Heartbeat; False when the job was canceled or taken over and the owner must stop."""
    now = utcnow()
    res = await s.execute(
        update(Generation)
        .where(
            Generation.id == generation_id,
            Generation.lease_owner == owner,
            Generation.status == GenerationStatus.PROCESSING,
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def release_leases(s: AsyncSession, owner: str) -> None:
    """Hand a stopping worker's jobs back at once instead of making the next one wait out the lease."""
    await s.execute(
        update(Generation)
        .where(Generation.lease_owner == owner, Generation.status.in_(ACTIVE))
        .values(lease_owner=None, lease_expires_at=None)
    )


async def note_prediction(s: AsyncSession, generation_id: str, provider: str, prediction_id: str) -> None:
    """Remember the upstream job, so a cancel from any process can stop it."""
    await s.execute(
        update(Generation)
        .where(Generation.id == generation_id)
        .values(provider_state={"provider": provider, "prediction_id": prediction_id})
    )


async def succeed(
    s: AsyncSession,
    gen: Generation,
    owner: str,
    provider_used: str,
    output_files: Sequence[dict[str, Any]],
    predict_time: float | None,
) -> bool:
    """Finish with outputs and charge; False when the job ended meanwhile (canceled, taken over)."""
    won = await _finish(
        s,
        gen,
        GenerationStatus.SUCCEEDED,
        owner=owner,
        provider_used=provider_used,
        output_files=list(output_files),
        metrics_predict_time=predict_time,
    )
    if won:
        await _settle(s, gen, "charge")
        await _emit_terminal(s, gen.id, "generation.completed")
    return won


async def fail(
    s: AsyncSession,
    gen: Generation,
    error: ErrorName,
    message: str,
    provider_errors: list[dict[str, Any]] | None,
) -> bool:
    """Finish as failed and refund; False when the generation had already ended."""
    won = await _finish(
        s,
        gen,
        GenerationStatus.FAILED,
        error=message,
        error_code=error,
        provider_errors=provider_errors or None,
    )
    if won:
        refunded = await _settle(s, gen, "refund")
        await _emit_terminal(s, gen.id, "generation.failed", refunded)
    return won


async def cancel(s: AsyncSession, account_id: str, generation_id: str) -> tuple[Generation, bool]:
    """Cancel the account's active generation and refund it; returns it and whether money came back."""
    gen = await s.get(Generation, generation_id)
    if gen is None or gen.account_id != account_id:
        raise ApiError("bse_generation_not_found", details={"generation_id": generation_id})
    if gen.status not in ACTIVE:
        raise ApiError(
            "bse_generation_not_cancelable",
            f"The generation is already {gen.status} and cannot be canceled.",
            details={"generation_status": gen.status},
        )
    if not await _finish(s, gen, GenerationStatus.CANCELED):  # ended between our read and our update
        raise ApiError("bse_generation_not_cancelable")
    refunded = await _settle(s, gen, "refund")
    await _emit_terminal(s, gen.id, "generation.canceled", refunded)
    return gen, refunded


async def delete_row(s: AsyncSession, generation_id: str) -> None:
    await s.execute(delete(Generation).where(Generation.id == generation_id))


async def _finish(
    s: AsyncSession, gen: Generation, status: GenerationStatus, *, owner: str | None = None, **values: Any
) -> bool:
    """Move an active generation to a terminal status once; False when it was already terminal."""
    now = utcnow()
    conds = [Generation.id == gen.id, Generation.status.in_(ACTIVE)]
    if owner is not None:
        conds.append(Generation.lease_owner == owner)
    res = await s.execute(
        update(Generation)
        .where(and_(*conds))
        .values(
            status=status,
            completed_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
            metrics_total_time=round((now - as_utc(gen.created_at)).total_seconds(), 3),
            **values,
        )
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def _settle(s: AsyncSession, gen: Generation, kind: Literal["charge", "refund"]) -> bool:
    """Charge or refund the reservation once: only the transaction that flips the flag writes money."""
    flipped = await s.execute(
        update(Generation)
        .where(Generation.id == gen.id, Generation.credits_settled.is_(False))
        .values(credits_settled=True)
    )
    if not flipped.rowcount:  # type: ignore[attr-defined]
        return False
    await ledger.settle(s, gen.account_id, gen.id, gen.cost_millis, kind)
    return True


async def _emit_terminal(
    s: AsyncSession, generation_id: str, event_type: str, refunded: bool | None = None
) -> None:
    """The terminal event, from the row as this transaction just wrote it."""
    gen = await s.get(Generation, generation_id, populate_existing=True)
    if gen is not None:
        await emit(s, gen.account_id, event_type, event_data(gen, refunded))
