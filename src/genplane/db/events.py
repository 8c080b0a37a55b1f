"""Signals between processes through the database itself: PostgreSQL ``NOTIFY``/``LISTEN``.

Several processes share one PostgreSQL database once genplane is scaled out; what one of
them commits, the others must hear about without polling: a new job (a worker wakes and
claims it), a cancel (the worker running it stops it), a generation's end (a
``Prefer: wait`` request held by another API process answers), a revoked key (every API
process forgets it).

A notification is queued inside the transaction that makes the change and delivered by
PostgreSQL when, and only if, that transaction commits: no hint for a job that rolled back,
none lost between a commit and a separate publish, and a change made by any process (the
CLI revoking a key included) reaches all of them. Notifications are hints, never the truth:
a listener re-reads the row, and the worker's sweep still finds any job whose hint was lost
(a listener reconnecting, a process starting late). On SQLite (one process) nothing is sent:
the process's own in-memory signals already reach everyone.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

log = structlog.get_logger("genplane.events")

#: A generation was created (or handed back) and waits for a worker: payload its id.
JOBS = "genplane_jobs"
#: A generation was canceled: payload its id; the worker running it stops it.
CANCELS = "genplane_cancels"
#: A generation became terminal: payload its id; ``Prefer: wait`` requests re-read it.
ENDED = "genplane_ended"
#: Keys changed: payload ``key:<id>`` or ``account:<id>``; auth caches drop them.
KEYS = "genplane_keys"

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")

#: Called with the payload; an awaitable it returns runs as its own task.
Handler = Callable[[str], object]


def announces(s: AsyncSession) -> bool:
    """Whether this session's database carries notifications (PostgreSQL)."""
    return s.get_bind().dialect.name == "postgresql"


async def announce(s: AsyncSession, channel: str, payload: str) -> None:
    """Queue ``payload`` on ``channel``, delivered if and when ``s``'s transaction commits."""
    if announces(s):
        await s.execute(_NOTIFY, {"channel": channel, "payload": payload})


def listen_dsn(url: str) -> str | None:
    """The plain libpq DSN of a PostgreSQL SQLAlchemy URL; None for any other database."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        return None
    return f"postgresql://{rest}"


class DatabaseListener:
    """One connection per process that LISTENs on the channels it was given handlers for.

    It reconnects with a growing pause when the connection drops, and then calls
    ``on_reconnect`` (the worker sweeps: what was announced meanwhile was lost). Handlers
    run on the event loop; one that raises is logged and the others go on.
    """

    def __init__(
        self,
        dsn: str,
        handlers: dict[str, Handler],
        on_reconnect: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._dsn = dsn
        self._handlers = handlers
        self._on_reconnect = on_reconnect
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        #: Set while a connection is listening; tests and start-up wait on it.
        self.listening = asyncio.Event()

    async def start(self) -> None:
        """Listen in the background; returns once the first connection listens (or failed once)."""
        self._task = asyncio.create_task(self._run())
        first = asyncio.ensure_future(self.listening.wait())
        await asyncio.wait({first, self._task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        first.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def _run(self) -> None:
        pause = 0.1
        connected_before = False
        while True:
            lost = asyncio.get_running_loop().create_future()
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("listener_connect_failed", error=type(exc).__name__, retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            try:
                conn.add_termination_listener(functools.partial(_resolve, lost))
                for channel in self._handlers:
                    await conn.add_listener(channel, self._deliver)
                self.listening.set()
                pause = 0.1
                if connected_before and self._on_reconnect is not None:
                    log.info("listener_reconnected")
                    self._spawn(self._on_reconnect())
                connected_before = True
                await lost
                log.warning("listener_connection_lost")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listener_failed", error=type(exc).__name__)
            finally:
                self.listening.clear()
                if not conn.is_closed():
                    await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(pause)

    def _deliver(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            result = handler(payload)
        except Exception:
            log.exception("listener_handler_failed", channel=channel)
            return
        if inspect.isawaitable(result):
            self._spawn(result)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("listener_handler_failed")

        task = asyncio.create_task(guarded())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def _resolve(future: asyncio.Future[None], _conn: Any) -> None:
    if not future.done():
        future.set_result(None)
