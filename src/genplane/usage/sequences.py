"""Per-key request sequences, and the abusive patterns found in them.

Every authenticated request is appended to its key's history: a ring buffer of the
key's last ``GENPLANE_ANOMALY_HISTORY_SIZE`` requests (operation, status, monotonic
time and, on ``/v1/content/{generation_id}``, the id), held in a few flat arrays so a
key costs a few kilobytes at most. After each append, the detectors the request can
trigger look back over the buffer, within their window:

- ``id_enumeration``: at least N ``404`` answers (``bse_generation_not_found``) on
  ``/v1/content/{generation_id}`` (get, delete, cancel): a client trying ids it does
  not own or that do not exist. A few 404s are normal (a deleted generation);
- ``polling_storm``: at least N GETs of one generation, or at least M GETs on
  ``/v1/content`` as a whole (any id, or the list), within the polling window. A client
  polling a generation every 0.5 s is well under the defaults;
- ``failed_create_burst``: at least N creates refused with a 4xx other than 429 (invalid
  bodies, unknown models, no credits...). 429s are left out: they are the rate limits and
  the in-flight cap doing their job, and a client honouring ``Retry-After`` is not abusive.

A request is looked at only by the detectors it can trigger, and a detector counts only
when the key sent at least its threshold of requests within its window (one array read).
Counting is a binary search for the window's edge and a count in C over at most the
buffer, so ordinary traffic costs an append and a storm a few microseconds per request.

A pattern found opens an episode, a :class:`Flag`: key id and prefix, account, pattern,
count, first and last seen. Each further matching request while the pattern holds adds
to it; once matching requests stop for a window, the next detection opens a new one.
Flags are handed to :class:`genplane.usage.anomalies.AnomalyRecorder`, which writes them
in batches (``genplane keys anomalies`` lists them), and a newly opened flag whose
pattern is in ``GENPLANE_ANOMALY_AUTO_BLOCK`` is returned to the caller, which blocks
the key in the firewall's store.

Everything lives in this process's memory, bounded: at most ``MAX_KEYS`` histories
(idle ones go first) and the open episodes of those keys. With Redis configured, the
counts of the other API processes are added to this one's
(:mod:`genplane.usage.shared_windows`), so a storm spread over them is found as well.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import chain

import structlog

from genplane.clock import utcnow
from genplane.ids import new_id
from genplane.settings import AnomalyPattern, Settings
from genplane.usage.shared_windows import SharedWindows

log = structlog.get_logger("genplane.anomalies")

#: Histories kept at once; past it, the keys idle longest are forgotten first.
MAX_KEYS = 20_000

# What a request is, as far as the detectors care (bits of ``kind``).
CONTENT_ID = 1  # an operation on /v1/content/{generation_id} (get, delete, cancel)
CONTENT_READ = 2  # a GET on /v1/content (one generation or the list)
POLL = 4  # GET /v1/content/{generation_id}
CREATE = 8  # POST /v1/generate/...

# What a request counts towards (bits of the stored mark), from its kind and status.
_NOT_FOUND = 1
_READ = 2
_POLL = 4
_FAILED_CREATE = 8
# bytes.translate tables mapping a mark to 1 when it has the bit, else 0 (counted in C).
_BIT_TABLES = {
    bit: bytes(1 if value & bit else 0 for value in range(256))
    for bit in (_NOT_FOUND, _READ, _POLL, _FAILED_CREATE)
}


@lru_cache(maxsize=256)
def classify(method: str, path: str) -> int:
    """The ``kind`` bits of an operation, from its method and path template."""
    kind = 0
    if path.startswith("/v1/content"):
        if "{generation_id" in path:
            kind |= CONTENT_ID
            if method == "GET":
                kind |= POLL
        if method == "GET":
            kind |= CONTENT_READ
    elif method == "POST" and path.startswith("/v1/generate/"):
        kind |= CREATE
    return kind


def _mark(kind: int, status: int) -> int:
    mark = 0
    if kind & CONTENT_ID and status == 404:
        mark |= _NOT_FOUND
    if kind & CONTENT_READ:
        mark |= _READ
    if kind & POLL:
        mark |= _POLL
    if kind & CREATE and 400 <= status < 500 and status != 429:
        mark |= _FAILED_CREATE
    return mark


@dataclass(frozen=True, slots=True)
class SequenceEntry:
    operation: str
    status: int
    at: float  # monotonic seconds
    target: str | None


class KeyHistory:
    """The last ``size`` requests of one key, oldest overwritten first."""

    __slots__ = ("head", "marks", "operations", "size", "statuses", "targets", "times")

    def __init__(self, size: int) -> None:
        self.size = size
        self.times = array("d")
        self.statuses = array("H")
        self.marks = bytearray()
        self.operations: list[str] = []
        self.targets: list[str | None] = []
        self.head = 0  # where the next entry goes once the buffer is full

    def __len__(self) -> int:
        return len(self.times)

    def append(self, operation: str, status: int, mark: int, at: float, target: str | None) -> None:
        if len(self.times) < self.size:
            self.times.append(at)
            self.statuses.append(status)
            self.marks.append(mark)
            self.operations.append(operation)
            self.targets.append(target)
            return
        i = self.head
        self.times[i] = at
        self.statuses[i] = status
        self.marks[i] = mark
        self.operations[i] = operation
        self.targets[i] = target
        self.head = (i + 1) % self.size

    def newest(self) -> float:
        n = len(self.times)
        return self.times[(self.head - 1) % n] if n == self.size else self.times[n - 1]

    def time_back(self, k: int) -> float:
        """The time of the request ``k`` places before the newest (0: the newest)."""
        n = len(self.times)
        return self.times[(self.head - 1 - k) % n] if n == self.size else self.times[n - 1 - k]

    def newest_first(self) -> Iterable[int]:
        n = len(self.times)
        if n < self.size or self.head == 0:
            return range(n - 1, -1, -1)
        return chain(range(self.head - 1, -1, -1), range(n - 1, self.head - 1, -1))

    def window(self, horizon: float) -> tuple[tuple[int, int], ...]:
        """The index ranges of the entries no older than ``horizon`` (times only grow, so
        each of the buffer's two chronological runs is sorted: a binary search finds the edge)."""
        times = self.times
        n = len(times)
        h = self.head if n == self.size else 0
        if h == 0:
            return ((bisect_left(times, horizon, 0, n), n),)
        if times[n - 1] >= horizon:  # the window reaches into the older run, times[h:]
            return (bisect_left(times, horizon, h, n), n), (0, h)
        return ((bisect_left(times, horizon, 0, h), h),)

    def count(self, ranges: tuple[tuple[int, int], ...], bit: int, target: str | None = None) -> int:
        """Entries in ``ranges`` with ``bit``, or (for a target) polls of ``target``; in C loops."""
        if target is not None:
            return sum(self.targets[lo:hi].count(target) for lo, hi in ranges)
        table = _BIT_TABLES[bit]
        return sum(self.marks[lo:hi].translate(table).count(1) for lo, hi in ranges)

    def oldest_match(self, horizon: float, bit: int, target: str | None = None) -> float:
        """The time of the oldest entry with ``bit`` (and ``target``) no older than ``horizon``."""
        times, marks, targets = self.times, self.marks, self.targets
        oldest = horizon
        for i in self.newest_first():
            at = times[i]
            if at < horizon:
                break
            if marks[i] & bit and (target is None or targets[i] == target):
                oldest = at
        return oldest

    def entries(self) -> list[SequenceEntry]:
        """Oldest first."""
        order = list(self.newest_first())
        order.reverse()
        return [
            SequenceEntry(self.operations[i], self.statuses[i], self.times[i], self.targets[i]) for i in order
        ]


@dataclass(slots=True)
class Flag:
    """One episode of one pattern on one key."""

    id: str
    key_id: str
    key_prefix: str
    account_id: str
    pattern: AnomalyPattern
    detail: str | None
    count: int
    first_seen_at: datetime
    last_seen_at: datetime
    blocked_until: datetime | None
    last_seen: float  # monotonic, to tell whether the episode goes on
    last_request: int  # serial number of the request that last matched


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: AnomalyPattern
    bit: int
    threshold: int
    window: float
    per_target: bool

    def counter(self, detail: str | None) -> str:
        """The rule's shared counter (one per polled generation for a per-target rule)."""
        return f"{self.bit}:{detail}" if detail is not None else str(self.bit)


class SequenceAnalytics:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
        shared: SharedWindows | None = None,
    ) -> None:
        self.enabled = settings.anomaly_detection_enabled
        self.shared = shared
        self.size = settings.anomaly_history_size
        self.block_seconds = settings.firewall_block_seconds
        self.auto_block: frozenset[str] = frozenset(settings.anomaly_auto_block)
        self.clock = clock
        self.max_keys = max_keys
        self._rules_by_bit: dict[int, tuple[_Rule, ...]] = {}
        rules = (
            _Rule(
                "id_enumeration",
                _NOT_FOUND,
                settings.anomaly_enumeration_threshold,
                settings.anomaly_enumeration_window_seconds,
                False,
            ),
            _Rule(
                "polling_storm",
                _POLL,
                settings.anomaly_polling_threshold,
                settings.anomaly_polling_window_seconds,
                True,
            ),
            _Rule(
                "polling_storm",
                _READ,
                settings.anomaly_content_reads_threshold,
                settings.anomaly_polling_window_seconds,
                False,
            ),
            _Rule(
                "failed_create_burst",
                _FAILED_CREATE,
                settings.anomaly_failed_create_threshold,
                settings.anomaly_failed_create_window_seconds,
                False,
            ),
        )
        self._rules = rules
        self._idle_after = max(r.window for r in rules)
        self._histories: dict[str, KeyHistory] = {}
        self._open: dict[tuple[str, str], Flag] = {}
        self._dirty: dict[str, Flag] = {}
        self._serial = 0

    # -- feeding ------------------------------------------------------------------------------------

    def record(
        self,
        key_id: str,
        key_prefix: str,
        account_id: str,
        operation: str,
        kind: int,
        status: int,
        target: str | None = None,
    ) -> list[Flag]:
        """Append one request to the key's history and run the detectors it can trigger.

        Returns the flags this request opened whose pattern blocks automatically (the
        caller blocks the key); usually an empty list.
        """
        if not self.enabled:
            return []
        now = self.clock()
        self._serial += 1
        history = self._histories.get(key_id)
        if history is None:
            if len(self._histories) >= self.max_keys:
                self._forget_idle(now)
            history = self._histories[key_id] = KeyHistory(self.size)
        mark = _mark(kind, status)
        history.append(operation, status, mark, now, target if kind & POLL else None)
        if not mark:
            return []
        opened: list[Flag] = []
        shared = self.shared
        for rule in self._rules:
            if not mark & rule.bit:
                continue
            detail = target if rule.per_target else None
            peers = 0
            if shared is not None:
                counter = rule.counter(detail)
                shared.add(key_id, counter, rule.window)
                peers = shared.peers(key_id, counter)
            horizon = now - rule.window
            # Fewer requests of any kind than this process must add within the window: nothing
            # to count.
            need = rule.threshold - peers
            if need > 0 and (len(history) < need or history.time_back(need - 1) < horizon):
                continue
            found = history.count(history.window(horizon), rule.bit, detail) + peers
            if found < rule.threshold:
                continue
            flag = self._flag(key_id, key_prefix, account_id, rule, detail, found, horizon, now, history)
            if flag is not None and flag.blocked_until is not None:
                opened.append(flag)
        return opened

    def _flag(
        self,
        key_id: str,
        key_prefix: str,
        account_id: str,
        rule: _Rule,
        detail: str | None,
        found: int,
        horizon: float,
        now: float,
        history: KeyHistory,
    ) -> Flag | None:
        """Extend the key's open episode of the pattern, or open one; the new one, if any."""
        wall = utcnow()
        described = detail if detail is not None else ("content reads" if rule.bit == _READ else None)
        episode = self._open.get((key_id, rule.pattern))
        if episode is not None and now - episode.last_seen <= rule.window:
            if episode.last_request == self._serial:
                return None  # the same request, found by a second rule of the pattern
            episode.count += 1
            episode.last_seen = now
            episode.last_request = self._serial
            episode.last_seen_at = wall
            if described is not None:
                episode.detail = described
            self._dirty[episode.id] = episode
            return None
        block = rule.pattern in self.auto_block
        episode = Flag(
            id=new_id(),
            key_id=key_id,
            key_prefix=key_prefix,
            account_id=account_id,
            pattern=rule.pattern,
            detail=described,
            count=found,
            first_seen_at=wall - timedelta(seconds=now - history.oldest_match(horizon, rule.bit, detail)),
            last_seen_at=wall,
            blocked_until=wall + timedelta(seconds=self.block_seconds) if block else None,
            last_seen=now,
            last_request=self._serial,
        )
        if len(self._open) >= self.max_keys:
            self._open = {k: f for k, f in self._open.items() if now - f.last_seen <= self._idle_after}
        self._open[(key_id, rule.pattern)] = episode
        self._dirty[episode.id] = episode
        log.warning(
            "anomaly_flagged",
            key_prefix=key_prefix,
            key_id=key_id,
            account_id=account_id,
            pattern=rule.pattern,
            detail=described,
            count=found,
            window_seconds=rule.window,
            blocked_seconds=self.block_seconds if block else None,
        )
        return episode

    def _forget_idle(self, now: float) -> None:
        horizon = now - self._idle_after
        self._histories = {k: h for k, h in self._histories.items() if h.newest() >= horizon}
        while len(self._histories) >= self.max_keys:
            del self._histories[next(iter(self._histories))]

    # -- reading --------------------------------------------------------------------------------------

    def history(self, key_id: str) -> list[SequenceEntry]:
        """The key's remembered requests, oldest first."""
        found = self._histories.get(key_id)
        return found.entries() if found is not None else []

    def open_flags(self, key_id: str | None = None) -> list[Flag]:
        return [replace(f) for f in self._open.values() if key_id is None or f.key_id == key_id]

    def take_dirty(self) -> list[Flag]:
        """Copies of the flags opened or extended since the last call, to be written."""
        if not self._dirty:
            return []
        dirty, self._dirty = self._dirty, {}
        return [replace(f) for f in dirty.values()]

    def put_back(self, flags: list[Flag]) -> None:
        """Flags a write failed to store: kept for the next one (newer states win)."""
        for flag in flags:
            self._dirty.setdefault(flag.id, flag)
