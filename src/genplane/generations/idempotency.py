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
from datetime import timedelta

import orjson
from sqlalchemy import delete, update
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
    now = utcnow()
    async with db.write() as s:
        rec = await s.get(IdempotencyRecord, (account_id, key))
        if rec is not None and as_utc(rec.created_at) < now - timedelta(hours=settings.idempotency_ttl_hours):
            await s.delete(rec)
            await s.flush()
            rec = None
        if rec is None:
            s.add(
                IdempotencyRecord(
                    account_id=account_id,
                    key=key,
                    request_hash=fingerprint,
                    state="in_progress",
                    response_status=None,
                    response_body=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            return None
        if rec.request_hash != fingerprint:
            raise ApiError("bse_idempotency_key_reused")
        if rec.state == "completed" and rec.response_body is not None and rec.response_status is not None:
            return Replay(rec.response_status, rec.response_body.encode())
        if (now - as_utc(rec.updated_at)).total_seconds() < settings.idempotency_stale_seconds:
            raise ApiError("bse_idempotency_in_progress")
        rec.updated_at = now  # abandoned by a crashed request: this one takes it over
        return None


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
