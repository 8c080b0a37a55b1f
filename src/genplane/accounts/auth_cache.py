"""A short-lived, in-process memory of verified keys.

Authentication sits in front of every request; reading the key and its account from
the database each time made it the largest cost of a cheap call such as polling a
generation. Only keys that were found and active are remembered, and each entry holds
plain values (never the key itself, only its hash as the dictionary key). Expiry,
scopes and the IP allowlist are still checked on every request against the
remembered row.

Revocation, rotation and account deletion done by this process drop the entries at
once (every cache of the process is registered here). On PostgreSQL the same transaction
announces the change (:mod:`genplane.db.events`), so every other process listening, the API
processes of a scaled-out install, drops them as soon as it commits, whoever made it (the
CLI included); a process that missed the announcement (its listener reconnecting) sees the
change within ``auth_cache_seconds``, as every process does on SQLite.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from genplane.db import events


@dataclass(frozen=True)
class KeyState:
    key_id: str
    account_id: str
    name: str
    prefix: str
    scopes: frozenset[str]
    allowed_ips: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked: bool
    plan: str
    account_active: bool


class AuthCache:
    def __init__(self, ttl_seconds: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, KeyState]] = {}
        _CACHES.add(self)

    def get(self, key_hash: str) -> KeyState | None:
        if self.ttl <= 0:
            return None
        hit = self._entries.get(key_hash)
        if hit is None:
            return None
        if time.monotonic() - hit[0] > self.ttl:
            del self._entries[key_hash]
            return None
        return hit[1]

    def put(self, key_hash: str, state: KeyState) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # a burst of distinct keys; cheaper than tracking recency
        self._entries[key_hash] = (time.monotonic(), state)

    def touched(self, key_hash: str, when: datetime) -> None:
        hit = self._entries.get(key_hash)
        if hit is not None:
            self._entries[key_hash] = (hit[0], replace(hit[1], last_used_at=when))

    def drop(self, *, key_id: str | None = None, account_id: str | None = None) -> None:
        stale = [
            h
            for h, (_, s) in self._entries.items()
            if (key_id is not None and s.key_id == key_id)
            or (account_id is not None and s.account_id == account_id)
        ]
        for h in stale:
            del self._entries[h]


_CACHES: weakref.WeakSet[AuthCache] = weakref.WeakSet()


def forget(*, key_id: str | None = None, account_id: str | None = None) -> None:
    """Drop a key or every key of an account from all caches of this process."""
    for cache in list(_CACHES):
        cache.drop(key_id=key_id, account_id=account_id)


async def announce_forget(
    s: AsyncSession, *, key_id: str | None = None, account_id: str | None = None
) -> None:
    """Tell every process listening to forget the key or account once ``s`` commits."""
    if key_id is not None:
        await events.announce(s, events.KEYS, f"key:{key_id}")
    if account_id is not None:
        await events.announce(s, events.KEYS, f"account:{account_id}")


def forget_announced(payload: str) -> None:
    """The handler of :data:`genplane.db.events.KEYS`: forget what another process changed."""
    kind, _, ident = payload.partition(":")
    if kind == "key" and ident:
        forget(key_id=ident)
    elif kind == "account" and ident:
        forget(account_id=ident)
