"""Every state transition of a generation, and the only code that writes its row.

A generation moves ``pending -> processing -> succeeded | failed | canceled``. Each move
here is one conditional UPDATE (the row moves only from the state the move expects), and
the moves that end a generation settle its money and queue its webhook event in the
caller's transaction, so state, ledger and outbox never disagree: a worker that loses a
race to a cancel writes nothing, and a crash between steps leaves nothing half done.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import JSON, Row, Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import as_utc, utcnow
from genplane.contract.errors import ApiError, ErrorName
from genplane.contract.rate_headers import refusal_headers
from genplane.contract.status import GenerationStatus
from genplane.credits import ledger
from genplane.db import events
from genplane.db.models import Account, Generation
from genplane.generations.record import event_data
from genplane.generations.request import GenerationRequest
from genplane.ids import new_id
from genplane.metrics import domain as metrics
from genplane.webhooks.outbox import emit, has_endpoints

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
        output_delivered=None,
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


_ACCOUNTS = cast(Table, Account.__table__)
#: Admits and reserves in one statement: below the in-flight cap and with the balance to pay,
#: or not at all. It is the create's only write of the account row, and its last statement.
_ADMIT = (
    update(_ACCOUNTS)
    .where(
        _ACCOUNTS.c.id == bindparam("aid"),
        _ACCOUNTS.c.generations_in_flight < bindparam("cap"),
        _ACCOUNTS.c.balance_millis >= bindparam("cost"),
    )
    .values(
        generations_in_flight=_ACCOUNTS.c.generations_in_flight + 1,
        generations_total=_ACCOUNTS.c.generations_total + 1,
        balance_millis=_ACCOUNTS.c.balance_millis - bindparam("cost"),
        updated_at=bindparam("now"),
    )
    .returning(_ACCOUNTS.c.balance_millis)
)
_ADMISSION_STATE = select(_ACCOUNTS.c.generations_in_flight, _ACCOUNTS.c.balance_millis).where(
    _ACCOUNTS.c.id == bindparam("aid")
)
#: Run by the transaction whose UPDATE ended the generation, so it lowers the count once.
_LANDED = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("aid"))
    .values(generations_in_flight=_ACCOUNTS.c.generations_in_flight - 1)
)
#: The same, giving money back in the same statement: the whole reservation (failed, canceled)
#: or the share of the outputs a provider did not deliver (succeeded with fewer).
_LANDED_REFUNDED = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("aid"))
    .values(
        generations_in_flight=_ACCOUNTS.c.generations_in_flight - 1,
        balance_millis=_ACCOUNTS.c.balance_millis + bindparam("amount"),
        updated_at=bindparam("now"),
    )
    .returning(_ACCOUNTS.c.balance_millis)
)


async def admit(s: AsyncSession, gen: Generation, max_inflight: int) -> None:
    """Record a new generation and reserve its cost, unless the account is at its in-flight cap
    or cannot pay.

    One conditional UPDATE of the account row admits and debits: it moves only below the cap
    and above the cost, and its row lock orders concurrent admits of one account on PostgreSQL
    as SQLite's single writer does, so neither the cap nor the balance is ever overrun. The
    generation's row and its notification are written before it: the lock is then held for the
    ledger entry and the commit only, not the whole create (holding it longer serialised an
    account's creates and completions across processes: bench/scale.py).
    """
    # A prebuilt Core insert (the object stays detached, as every generation the worker and the
    # service hold): the ORM's unit of work, or a statement built per call, cost more than it.
    await s.execute(_INSERT_GEN, {column.key: getattr(gen, column.key) for column in _GEN.columns})
    await events.announce(s, events.JOBS, gen.id)  # wakes a worker of any process at commit
    params = {"aid": gen.account_id, "cap": max_inflight, "cost": gen.cost_millis, "now": utcnow()}
    for _ in range(3):
        balance = (await s.execute(_ADMIT, params)).scalar_one_or_none()
        if balance is not None:
            await ledger.reserved(s, gen.account_id, gen.id, gen.cost_millis, int(balance))
            return
        state = (await s.execute(_ADMISSION_STATE, {"aid": gen.account_id})).one()
        if state.generations_in_flight >= max_inflight:
            raise _at_cap(state.generations_in_flight, max_inflight)
        if state.balance_millis < gen.cost_millis:
            raise ledger.insufficient(gen.cost_millis, int(state.balance_millis))
        # Both allowed by the time we looked (a generation landed meanwhile): try again.
    raise _at_cap(max_inflight, max_inflight)


def _at_cap(inflight: int, cap: int) -> ApiError:
    return ApiError(
        "bse_concurrency_limit_exceeded",
        f"{inflight} generations are in flight; the limit is {cap}.",
        details={"limit": cap, "retry_after_seconds": 1},
        headers=refusal_headers(cap, 1),
    )


async def _landed(s: AsyncSession, gen: Generation, refund_millis: int | None) -> None:
    """Lower the account's in-flight count, and give ``refund_millis`` back unless None: one
    statement, the ending transaction's only write of the account row and its last.

    None, not 0, means no refund: a failed free generation still records its refund of 0,
    so every ending has its settlement entry in the ledger."""
    if refund_millis is None:
        await s.execute(_LANDED, {"aid": gen.account_id})
        return
    params = {"aid": gen.account_id, "amount": refund_millis, "now": utcnow()}
    balance = (await s.execute(_LANDED_REFUNDED, params)).scalar_one()
    await ledger.refunded(s, gen.account_id, gen.id, refund_millis, int(balance))


# The worker's hot statements, built once: a job is claimed and ended with one UPDATE each,
# which returns what the caller needs instead of reading the row again.
_GEN = cast(Table, Generation.__table__)
_INSERT_GEN = insert(_GEN)
_NOTE_PREDICTION = (
    update(_GEN).where(_GEN.c.id == bindparam("gid")).values(provider_state=bindparam("state", type_=JSON))
)
_ROW = tuple(_GEN.c)
#: Returned beside the row: whether its account has webhook endpoints at all (most have none,
#: and then the event costs no lookup). The account is looked up by the bound id, not
#: correlated with the updated row: SQLite's RETURNING drops table names, which would turn
#: the comparison into one of the endpoints' own column with itself.
_ENDPOINTS = has_endpoints(
    select(_GEN.c.account_id).where(_GEN.c.id == bindparam("gid")).scalar_subquery()
).label("any_endpoint")
#: ``status IN ACTIVE`` as plain comparisons: an IN list is re-rendered at every execution.
_IS_ACTIVE = or_(*(_GEN.c.status == status for status in ACTIVE))
#: Whose lease has lapsed (or who has none): the jobs a worker may claim.
_CLAIMABLE = (
    _GEN.c.id == bindparam("gid"),
    _IS_ACTIVE,
    or_(_GEN.c.lease_expires_at.is_(None), _GEN.c.lease_expires_at < bindparam("now")),
)
_CLAIM_VALUES: dict[str, Any] = {
    "status": GenerationStatus.PROCESSING,
    "lease_owner": bindparam("owner"),
    "lease_expires_at": bindparam("until"),
    "claims": _GEN.c.claims + 1,
    "started_at": func.coalesce(_GEN.c.started_at, bindparam("now")),
    "updated_at": bindparam("now"),
}
_CLAIM = update(_GEN).where(*_CLAIMABLE).values(_CLAIM_VALUES).returning(*_ROW, _ENDPOINTS)
#: PostgreSQL: every worker is woken for a new job and all try to claim it; SKIP LOCKED lets
#: the losers see at once that another holds the row instead of queueing on its lock.
_CLAIM_SKIP_LOCKED = (
    update(_GEN)
    .where(_GEN.c.id.in_(select(_GEN.c.id).where(*_CLAIMABLE).with_for_update(skip_locked=True)))
    .values(_CLAIM_VALUES)
    .returning(*_ROW, _ENDPOINTS)
)
#: What ending a generation sets besides its status and outcome, and the columns its event reads.
_ENDED: dict[str, Any] = {
    "completed_at": bindparam("now"),
    "updated_at": bindparam("now"),
    "lease_owner": None,
    "lease_expires_at": None,
    "metrics_total_time": bindparam("total"),
}
_EVENT_ROW = (
    *(
        _GEN.c[name]
        for name in (
            "id", "account_id", "model_identifier", "status", "provider_used", "prediction_id",
            "output_files", "output_delivered", "error", "error_code",
        )
    ),
    _ENDPOINTS,
)
#: Success also flips the settlement flag, in the same statement: the row can only be unsettled
#: while active (every ending settles), so this UPDATE is the flip that makes the charge once.
_SUCCEED = (
    update(_GEN)
    .where(
        _GEN.c.id == bindparam("gid"),
        _IS_ACTIVE,
        _GEN.c.lease_owner == bindparam("owner"),
        _GEN.c.credits_settled.is_(False),
    )
    .values(
        status=GenerationStatus.SUCCEEDED,
        credits_settled=True,
        provider_used=bindparam("provider"),
        output_files=bindparam("files"),
        output_delivered=bindparam("delivered"),
        metrics_predict_time=bindparam("predict"),
        **_ENDED,
    )
    .returning(*_EVENT_ROW)
)
_FAIL = (
    update(_GEN)
    .where(_GEN.c.id == bindparam("gid"), _IS_ACTIVE)
    .values(
        status=GenerationStatus.FAILED,
        error=bindparam("message"),
        error_code=bindparam("code"),
        # None is SQL NULL here, as a literal None in values() is, not JSON null.
        provider_errors=bindparam("errors", type_=JSON(none_as_null=True)),
        **_ENDED,
    )
    .returning(*_EVENT_ROW)
)
_SETTLE = (
    update(_GEN)
    .where(_GEN.c.id == bindparam("gid"), _GEN.c.credits_settled.is_(False))
    .values(credits_settled=True)
)


def _from_row(row: Row[Any]) -> Generation:
    """A generation (not attached to any session) with the row's values of its columns."""
    values = row._asdict()
    values.pop(_ENDPOINTS.key, None)
    return Generation(**values)


def _run_time(gen: Generation, now: datetime) -> float:
    return round((now - as_utc(gen.created_at)).total_seconds(), 3)


async def claim(s: AsyncSession, generation_id: str, owner: str, lease_seconds: float) -> Generation | None:
    """Take the job's lease if nobody holds a live one; the first claim announces the start."""
    now = utcnow()
    params = {
        "gid": generation_id, "now": now, "owner": owner, "until": now + timedelta(seconds=lease_seconds)
    }
    statement = _CLAIM_SKIP_LOCKED if events.announces(s) else _CLAIM
    row = (await s.execute(statement, params)).first()
    if row is None:
        return None
    gen = _from_row(row)  # the row as the claim left it, without reading it again
    if gen.claims == 1:
        await emit(
            s, gen.account_id, "generation.started", lambda: event_data(gen),
            any_endpoint=bool(row.any_endpoint),
        )
    return gen


async def extend_leases(s: AsyncSession, owner: str, lease_seconds: float) -> set[str]:
    """Renew every lease ``owner`` holds, in one statement: the worker's heartbeat.

    Returns the ids renewed; a job its worker runs that is not among them was canceled or
    taken over meanwhile, and the worker must stop it.
    """
    now = utcnow()
    renewed = await s.execute(
        update(_GEN)
        .where(_GEN.c.lease_owner == owner, _GEN.c.status == GenerationStatus.PROCESSING)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
        .returning(_GEN.c.id)
    )
    return set(renewed.scalars())


async def release_leases(s: AsyncSession, owner: str) -> None:
    """Hand a stopping worker's jobs back at once instead of making the next one wait out the
    lease; another process's worker is woken for each at commit."""
    handed_back = await s.execute(
        update(_GEN)
        .where(_GEN.c.lease_owner == owner, _IS_ACTIVE)
        .values(lease_owner=None, lease_expires_at=None)
        .returning(_GEN.c.id)
    )
    if events.announces(s):
        for gid in handed_back.scalars():
            await events.announce(s, events.JOBS, gid)


async def note_prediction(s: AsyncSession, generation_id: str, provider: str, prediction_id: str) -> None:
    """Remember the upstream job, so a cancel from any process can stop it."""
    await s.execute(
        _NOTE_PREDICTION,
        {"gid": generation_id, "state": {"provider": provider, "prediction_id": prediction_id}},
    )


async def succeed(
    s: AsyncSession,
    gen: Generation,
    owner: str,
    provider_used: str,
    output_files: Sequence[dict[str, Any]],
    predict_time: float | None,
    charge_millis: int | None = None,
) -> bool:
    """Finish with outputs and charge; False when the job ended meanwhile (canceled, taken over).

    ``charge_millis`` is what the delivered outputs cost (the whole reservation when None):
    a provider that returned fewer outputs than asked is paid for those only, and the rest of
    the reservation is refunded in this transaction, so the ledger shows both movements. The
    charge never exceeds the reservation, and the record keeps how many outputs were delivered
    (capped at the number asked: the ones beyond it were not paid for).
    """
    charge = gen.cost_millis if charge_millis is None else min(max(charge_millis, 0), gen.cost_millis)
    refund = gen.cost_millis - charge
    now = utcnow()
    params = {
        "gid": gen.id, "owner": owner, "provider": provider_used, "files": list(output_files),
        "delivered": min(len(output_files), gen.output_number),
        "predict": predict_time, "now": now, "total": _run_time(gen, now),
    }
    ended = (await s.execute(_SUCCEED, params)).first()
    if ended is None:
        return False
    metrics.generation_ended(s, gen.model_identifier, provider_used, GenerationStatus.SUCCEEDED)
    await _emit_terminal(s, gen.id, "generation.completed", True if refund else None, ended=ended)
    # The refund's entry first: it moves the balance the charge's entry then reads.
    await _landed(s, gen, refund or None)
    # After the account row's lock: the entry's balance is the one the ledger's order gives.
    await ledger.charged(s, gen.account_id, gen.id, charge)  # settled flag flipped above
    return True


async def fail(
    s: AsyncSession,
    gen: Generation,
    error: ErrorName,
    message: str,
    provider_errors: list[dict[str, Any]] | None,
) -> bool:
    """Finish as failed and refund; False when the generation had already ended."""
    now = utcnow()
    params = {
        "gid": gen.id, "message": message, "code": error, "errors": provider_errors or None,
        "now": now, "total": _run_time(gen, now),
    }
    ended = (await s.execute(_FAIL, params)).first()
    if ended is None:
        return False
    refunded = await _settles(s, gen)
    last_tried = provider_errors[-1].get("provider") if provider_errors else None
    metrics.generation_ended(s, gen.model_identifier, last_tried, GenerationStatus.FAILED)
    await _emit_terminal(s, gen.id, "generation.failed", refunded, ended=ended)
    await _landed(s, gen, gen.cost_millis if refunded else None)
    return True


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
    refunded = await _settles(s, gen)
    running = (gen.provider_state or {}).get("provider")
    metrics.generation_ended(s, gen.model_identifier, running, GenerationStatus.CANCELED)
    await _emit_terminal(s, gen.id, "generation.canceled", refunded)
    await events.announce(s, events.CANCELS, gen.id)  # the worker running it, in any process, stops
    await _landed(s, gen, gen.cost_millis if refunded else None)
    return gen, refunded


async def delete_row(s: AsyncSession, generation_id: str) -> None:
    deleted = await s.execute(
        delete(Generation).where(Generation.id == generation_id).returning(Generation.account_id)
    )
    account_id = deleted.scalar_one_or_none()
    if account_id is not None:  # a concurrent delete of the same row counts once
        await _count_generations(s, account_id, -1)


async def _count_generations(s: AsyncSession, account_id: str, change: int) -> None:
    """Keep ``accounts.generations_total`` equal to the account's rows, in the row's transaction."""
    await s.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(generations_total=Account.generations_total + change)
    )


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


async def _settles(s: AsyncSession, gen: Generation) -> bool:
    """Whether this transaction settles the generation's money: only the one that flips the
    flag does, so a reservation is refunded (or charged) once whatever retries or races."""
    flipped = await s.execute(_SETTLE, {"gid": gen.id})
    return bool(flipped.rowcount)  # type: ignore[attr-defined]


async def _emit_terminal(
    s: AsyncSession,
    generation_id: str,
    event_type: str,
    refunded: bool | None = None,
    *,
    ended: Row[Any] | None = None,
) -> None:
    """The terminal event, from the row as this transaction just wrote it: ``ended``, what the
    ending UPDATE returned, or else the row read again. The event's data is built only when
    an endpoint wants the event."""
    await events.announce(s, events.ENDED, generation_id)  # ``Prefer: wait`` in any process
    if ended is not None:
        row = ended
        await emit(
            s, row.account_id, event_type, lambda: event_data(_from_row(row), refunded),
            any_endpoint=bool(row.any_endpoint),
        )
        return
    gen = await s.get(Generation, generation_id, populate_existing=True)
    if gen is not None:
        await emit(s, gen.account_id, event_type, event_data(gen, refunded))
