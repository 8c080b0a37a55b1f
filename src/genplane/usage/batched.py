"""Counts gathered in memory and written in batches, on a timer and on demand.

Writing per request would put a database write on every read, so the usage counters and
the anomaly flags collect in memory and are flushed together. A flush asked for by a
reader (``/v1/usage``) or by shutdown must see everything recorded before it: the lock
makes it wait for a timed flush that already took its batch, instead of returning while
that batch is still on its way to the database.
"""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("genplane.usage")


class BatchedWriter:
    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    async def _write_pending(self) -> None:
        """Take what is pending and write it; put it back if the write fails."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Returns once everything recorded before the call is written."""
        async with self._flushing:
            await self._write_pending()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception(f"{self.name}_flush_failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
