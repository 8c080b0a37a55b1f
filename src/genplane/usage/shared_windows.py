"""The anomaly detectors' windows across API processes, through Redis.

Behind a load balancer one key's requests are spread over every API process, so a storm
of 200 polls in 10 s reaches each of four processes as 50: below every threshold, found
by none. Each process keeps its own history, exact and free of round trips (see
:mod:`genplane.usage.sequences`), and adds what the *other* processes counted, as of
their last exchange:

- each process counts the marks it records (a 404 on a generation, a content read, a
  poll of one generation, a refused create) in one-second buckets, and every
  ``GENPLANE_ANOMALY_SHARE_INTERVAL_SECONDS`` adds them to Redis, one hash per key and
  counter with a field per (second, process), expiring with the counter's window;
- in the same exchange it reads back the counters it has seen lately and keeps, per
  counter, the other processes' total within the window.

A detector then compares its own count plus the peers' with the threshold. The peers'
part is at most one interval old (half a second by default), so a spread-out storm is
found that much later than a storm on one process; nothing is written per request.
The per-generation poll counters are kept only for generations polled within the
window, and at most :data:`MAX_COUNTERS` counters are followed at once.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

from redis.asyncio import Redis

from genplane.usage.batched import BatchedWriter

#: Counters followed at once by one process; past it the least recently seen are dropped.
MAX_COUNTERS = 20_000


class SharedWindows(BatchedWriter):
    """Exchanged on :class:`BatchedWriter`'s timer, and once more when the process stops."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval, "anomaly_share")
        self.redis = redis
        self.prefix = prefix + "anomaly:"
        self.clock = clock
        #: This process in the hash fields: its own counts are never taken for a peer's.
        self.process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._pending: dict[str, dict[int, int]] = {}  # counter key -> second -> count
        # counter key -> (window, last seen), least recently seen first
        self._followed: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._peers: dict[str, int] = {}

    def _key(self, key_id: str, counter: str) -> str:
        return f"{self.prefix}{key_id}:{counter}"

    def add(self, key_id: str, counter: str, window: float) -> None:
        """One mark of this process's (a dict update: the exchange does the rest)."""
        name = self._key(key_id, counter)
        now = self.clock()
        buckets = self._pending.setdefault(name, {})
        second = int(now)
        buckets[second] = buckets.get(second, 0) + 1
        followed = self._followed
        if name in followed:
            followed.move_to_end(name)
        elif len(followed) >= MAX_COUNTERS:
            oldest, _ = followed.popitem(last=False)
            self._peers.pop(oldest, None)
        followed[name] = (window, now)

    def peers(self, key_id: str, counter: str) -> int:
        """What the other processes counted within the window, as of the last exchange."""
        return self._peers.get(self._key(key_id, counter), 0)

    async def exchange(self) -> None:
        """Send this process's new counts; read back the peers' within each window."""
        now = self.clock()
        pending, self._pending = self._pending, {}
        for name, (window, seen) in list(self._followed.items()):
            if now - seen > window:  # not seen here within its window: no detector asks
                del self._followed[name]
                self._peers.pop(name, None)
        names = list(self._followed)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, buckets in pending.items():
                    window = self._followed.get(name, (0.0, 0.0))[0]
                    for second, count in buckets.items():
                        pipe.hincrby(name, f"{second}:{self.process}", count)
                    pipe.expire(name, math.ceil(window) + 2)
                for name in names:
                    pipe.hgetall(name)
                answers = await pipe.execute()
        except Exception:
            for name, buckets in pending.items():  # counted at the next exchange instead
                mine = self._pending.setdefault(name, {})
                for second, count in buckets.items():
                    mine[second] = mine.get(second, 0) + count
            raise
        fields = answers[len(answers) - len(names):]
        peers: dict[str, int] = {}
        for name, found in zip(names, fields, strict=True):
            edge = now - self._followed[name][0]
            total = 0
            for field, value in found.items():
                second, _, process = field.decode().partition(":")
                if process != self.process and int(second) + 1 > edge:
                    total += int(value)
            if total:
                peers[name] = total
        self._peers = peers

    async def _write_pending(self) -> None:
        await self.exchange()
