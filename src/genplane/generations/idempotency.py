"""Idempotency-Key handling.

A key is claimed (``in_progress``) in its own short transaction before any work, so
a concurrent duplicate sees the claim and gets ``bse_idempotency_in_progress``. The
response is stored in the same transaction that creates the generation, so a replay
can never describe a generation that does not exist. A request that fails releases
its claim (the client may retry with the same key); a claim left by a crash is
taken over once it is older than ``idempotency_stale_seconds``. Records older than
``idempotency_ttl_hours`` are purged by the janitor (:mod:`genplane.jobs.janitor`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import as_utc, utcnow
from genplane.contract.errors import ApiError, invalid_input
from genplane.db.engine import Database
from genplane.db.models import IdempotencyRecord
from genplane.settings import Settings

KEY_RE = re.compile(r"^[A-Za-z0-9_\-:.]{1,255}$")


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: bytes


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise invalid_input(
            "Idempotency-Key", "Idempotency-Key must be 1 to 255 characters of [A-Za-z0-9_-:.]."
        )
    return key


def request_fingerprint(method: str, path: str, raw_body: bytes) -> str:
    """Same JSON with other spacing or key order is the same request."""
    try:
        canonical = orjson.dumps(orjson.loads(raw_body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = raw_body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


async def begin(
    db: Database, settings: Settings, account_id: str, key: str, fingerprint: str
) -> Replay | None:
    """Claim the key for this request (None), or answer with its replay or a refusal.

    Every step is one statement whose outcome decides: the claim is an insert that does
    nothing on a conflict, an expired record is deleted only while still expired, and a
    stale claim is taken over only if nobody touched it since it was read. Concurrent
    duplicates therefore get one claim and refusals, never a constraint error, on
    PostgreSQL (READ COMMITTED, many writers) as on SQLite.
    """
    now = utcnow()
    expired_before = now - timedelta(hours=settings.idempotency_ttl_hours)
    async with db.write() as s:
        for _ in range(3):  # a record deleted between our insert and our read: claim again
            if await _insert_claim(s, account_id, key, fingerprint, now):
                return None
            rec = (
                await s.execute(
                    select(IdempotencyRecord).where(
                        IdempotencyRecord.account_id == account_id, IdempotencyRecord.key == key
                    ).execution_options(populate_existing=True)
                )
            ).scalar_one_or_none()
            if rec is None:
                continue
            if as_utc(rec.created_at) < expired_before:
                await s.execute(
                    delete(IdempotencyRecord).where(
                        IdempotencyRecord.account_id == account_id,
                        IdempotencyRecord.key == key,
                        IdempotencyRecord.created_at < expired_before,
                    )
                )
                continue
            if rec.request_hash != fingerprint:
                raise ApiError("bse_idempotency_key_reused")
            if rec.state == "completed" and rec.response_body is not None and rec.response_status is not None:
                return Replay(rec.response_status, rec.response_body.encode())
            if (now - as_utc(rec.updated_at)).total_seconds() < settings.idempotency_stale_seconds:
                raise ApiError("bse_idempotency_in_progress")
            # Abandoned by a crashed request: this one takes it over, unless another did first.
            taken = await s.execute(
                update(IdempotencyRecord)
                .where(
                    IdempotencyRecord.account_id == account_id,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.state == "in_progress",
                    IdempotencyRecord.updated_at == rec.updated_at,
                )
                .values(updated_at=now)
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                return None
            raise ApiError("bse_idempotency_in_progress")
    raise ApiError("bse_idempotency_in_progress")  # claimed and released over and over meanwhile


async def _insert_claim(s: AsyncSession, account_id: str, key: str, fingerprint: str, now: datetime) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING``: True when this request now holds the key."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    claimed = await s.execute(
        insert(IdempotencyRecord)
        .values(
            account_id=account_id,
            key=key,
            request_hash=fingerprint,
            state="in_progress",
            response_status=None,
            response_body=None,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["account_id", "key"])
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


async def complete(s: AsyncSession, account_id: str, key: str, status_code: int, body: bytes) -> None:
    await s.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.account_id == account_id, IdempotencyRecord.key == key)
        .values(
            state="completed", response_status=status_code, response_body=body.decode(), updated_at=utcnow()
        )
    )


async def release(db: Database, account_id: str, key: str) -> None:
    async with db.write() as s:
        await s.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.account_id == account_id,
                IdempotencyRecord.key == key,
                IdempotencyRecord.state == "in_progress",
            )
        )
