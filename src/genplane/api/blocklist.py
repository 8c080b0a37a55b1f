"""Who the firewall is blocking: rejection counts in a sliding window, and blocks with a cool-down.

A *subject* is either an API key (``key:<digest of the full token>``) or a client
address (``ip:<address>``, IPv6 grouped by /64). The digest, never the token, is what
is kept; logs carry only the token's first 9 characters. The prefix alone cannot be the
subject: it is ``bye_<region>_`` plus two characters, so unrelated keys would share it.

Besides rejections, the anomaly detectors (:mod:`genplane.usage.sequences`) may block a
key outright (:meth:`FirewallStore.block`) when the operator lets them.

Storage sits behind :class:`FirewallStore` so several processes can share it later
(Redis); :class:`MemoryFirewallStore` keeps everything in this process, bounded in size.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from genplane.settings import Settings

# Tracked subjects per table before idle ones are dropped (memory bound under a spray).
MAX_SUBJECTS = 100_000
# How long a key that authenticated once is treated as an authenticated caller.
VERIFIED_SECONDS = 24 * 3600.0
VERIFIED_REFRESH_SECONDS = 60.0


def key_subject(token: str) -> str:
    return "key:" + hashlib.blake2b(token.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def ip_subject(ip: str) -> str:
    """IPv4 as is; IPv6 by its /64, the unit one host (or one attacker) usually gets."""
    if ":" in ip:
        try:
            net = ipaddress.IPv6Network(f"{ip}/64", strict=False)
        except ValueError:
            return "ip:" + ip
        return f"ip:{net.network_address}/64"
    return "ip:" + ip


class FirewallStore(Protocol):
    async def blocked_for(self, subject: str) -> float:
        """Seconds the subject stays blocked; 0 when it is not blocked."""
        ...

    async def record_rejection(self, subject: str) -> float:
        """Count one rejection; return the block's length when this one started a block, else 0."""
        ...

    async def block(self, subject: str, seconds: float) -> None:
        """Block the subject now for ``seconds`` (or longer, when it already is), whatever its count."""
        ...

    async def mark_verified(self, subject: str, account_id: str) -> None:
        """Remember that this key subject authenticated successfully, as ``account_id``."""
        ...

    async def verified_account(self, subject: str) -> str | None:
        """The account of a key subject that authenticated recently; None for any other."""
        ...


class MemoryFirewallStore:
    """Sliding-log counters (at most ``max_rejections + 1`` timestamps per subject) and blocks."""

    def __init__(
        self,
        max_rejections: int,
        window_seconds: float,
        block_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_subjects: int = MAX_SUBJECTS,
    ) -> None:
        self.max_rejections = max_rejections
        self.window = window_seconds
        self.block_seconds = block_seconds
        self.clock = clock
        self.max_subjects = max_subjects
        self._hits: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}
        self._verified: dict[str, tuple[float, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryFirewallStore:
        return cls(
            settings.firewall_max_rejections,
            settings.firewall_window_seconds,
            settings.firewall_block_seconds,
        )

    async def blocked_for(self, subject: str) -> float:
        until = self._blocked.get(subject)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._blocked[subject]
            return 0.0
        return left

    async def record_rejection(self, subject: str) -> float:
        now = self.clock()
        hits = self._hits.get(subject)
        if hits is None:
            if len(self._hits) >= self.max_subjects:
                self._prune(now)
            hits = self._hits[subject] = deque(maxlen=self.max_rejections + 1)
        hits.append(now)
        horizon = now - self.window
        while hits and hits[0] <= horizon:
            hits.popleft()
        if len(hits) <= self.max_rejections:
            return 0.0
        hits.clear()
        if len(self._blocked) >= self.max_subjects:
            self._blocked = {s: t for s, t in self._blocked.items() if t > now}
        self._blocked[subject] = now + self.block_seconds
        return self.block_seconds

    async def block(self, subject: str, seconds: float) -> None:
        now = self.clock()
        if len(self._blocked) >= self.max_subjects:
            self._blocked = {s: t for s, t in self._blocked.items() if t > now}
        self._blocked[subject] = max(self._blocked.get(subject, 0.0), now + seconds)

    async def mark_verified(self, subject: str, account_id: str) -> None:
        now = self.clock()
        seen = self._verified.get(subject)
        if seen is not None and now - seen[0] < VERIFIED_REFRESH_SECONDS and seen[1] == account_id:
            return
        self._verified.pop(subject, None)  # re-insert: the dict's order is least recently seen first
        self._verified[subject] = (now, account_id)
        while len(self._verified) > self.max_subjects:
            del self._verified[next(iter(self._verified))]

    async def verified_account(self, subject: str) -> str | None:
        seen = self._verified.get(subject)
        if seen is None or self.clock() - seen[0] >= VERIFIED_SECONDS:
            return None
        return seen[1]

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        self._hits = {s: h for s, h in self._hits.items() if h and h[-1] > horizon}
        while len(self._hits) >= self.max_subjects:
            del self._hits[next(iter(self._hits))]
