"""Who is waiting for a generation to end, and the signal that wakes them.

A request sent with ``Prefer: wait=N`` is held open until its generation is terminal or
N seconds have passed. Whoever commits a terminal transition (the worker after
``lifecycle.succeed``/``lifecycle.fail``, the service after ``lifecycle.cancel``) calls
:meth:`GenerationWaiters.notify`; a waiter then reads the row again, because the row is
the truth and a notification is only a hint (it may be late, lost or spurious).

:class:`GenerationWaiters` is the interface. :class:`LocalGenerationWaiters` serves each
process: it wakes requests waiting in this process. Transitions committed by another
process reach it on PostgreSQL as a notification sent by their commit
(:mod:`genplane.db.events`, ``ENDED``), which calls :meth:`notify` here; a missed one is
covered by the waiter's periodic re-read of the row or the end of its wait, never wrongly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol


class Subscription(Protocol):
    async def wait(self, seconds: float) -> bool:
        """Sleep until the generation is notified or ``seconds`` pass; True when notified.

        A notification sent after the subscription began and not yet returned by an earlier
        call ends the next call at once, so nothing sent between subscribing and waiting
        is missed.
        """
        ...


class GenerationWaiters(Protocol):
    def subscribe(self, generation_id: str) -> AbstractAsyncContextManager[Subscription]:
        """Listen for ``generation_id`` for as long as the context is open.

        Leaving the context (normally, on a timeout, or cancelled because the client went
        away) forgets the listener: nothing is kept for ids nobody waits on.
        """
        ...

    async def notify(self, generation_id: str) -> None:
        """Wake everyone subscribed to ``generation_id``; called after the transition commits.

        Never raises: a lost notification costs a waiter time, not correctness.
        """
        ...


class _Entry:
    """One id's signal, shared by all of its current subscribers."""

    __slots__ = ("event", "subscribers")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.subscribers = 0


class _LocalSubscription:
    __slots__ = ("_entry", "_hub", "_id")

    def __init__(self, hub: LocalGenerationWaiters, generation_id: str) -> None:
        self._hub = hub
        self._id = generation_id
        self._entry = hub._attach(generation_id)

    async def wait(self, seconds: float) -> bool:
        event = self._entry.event
        if not event.is_set():
            try:
                async with asyncio.timeout(max(seconds, 0.0)):
                    await event.wait()
            except TimeoutError:
                return False
        # This signal is spent: the next wait listens for the next notification.
        self._hub._detach(self._id, self._entry)
        self._entry = self._hub._attach(self._id)
        return True

    def close(self) -> None:
        self._hub._detach(self._id, self._entry)


class LocalGenerationWaiters:
    """In-process waiters: one :class:`asyncio.Event` per generation id someone waits on.

    Any number of requests may wait on one id; they share its event. ``notify`` sets the
    event and drops it from the table, and the last subscriber to leave drops an event no
    one notified, so the table holds only ids that have a waiter right now. Use it from
    the event loop's thread only (it takes no locks).
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        """Generation ids with at least one waiter."""
        return len(self._entries)

    @property
    def waiting(self) -> int:
        """Subscriptions listening right now, over all ids."""
        return sum(entry.subscribers for entry in self._entries.values())

    @asynccontextmanager
    async def subscribe(self, generation_id: str) -> AsyncIterator[Subscription]:
        subscription = _LocalSubscription(self, generation_id)
        try:
            yield subscription
        finally:
            subscription.close()

    async def notify(self, generation_id: str) -> None:
        entry = self._entries.pop(generation_id, None)
        if entry is not None:
            entry.event.set()

    def _attach(self, generation_id: str) -> _Entry:
        entry = self._entries.get(generation_id)
        if entry is None:
            entry = self._entries[generation_id] = _Entry()
        entry.subscribers += 1
        return entry

    def _detach(self, generation_id: str, entry: _Entry) -> None:
        entry.subscribers -= 1
        if entry.subscribers <= 0 and self._entries.get(generation_id) is entry:
            del self._entries[generation_id]
