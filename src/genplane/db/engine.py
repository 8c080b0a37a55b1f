"""Database access with one rule for writers.

SQLite allows one writer at a time and fails a deferred transaction that tries to
upgrade its lock, so on SQLite every write transaction starts with BEGIN IMMEDIATE
and in-process writers queue on an asyncio lock. On PostgreSQL both paths are the
same pooled engine.

JSON columns are read and written with orjson: the standard library's decoder of a
record's JSON fields was about 2.5% of a poll's time in its profile, its encoder about as
much of a create's.

SQLite statements run inline on the event loop instead of on aiosqlite's
per-connection thread: a primary-key read costs microseconds in SQLite itself but
about a millisecond through the thread hand-offs, which capped polling near a thousand
requests per second and creates near two hundred. Inline is safe only if the loop
never waits inside SQLite, so:

- a WAL reader never waits for a writer;
- a writer asks for the lock without SQLite's busy wait and, when another process
  (the CLI) holds it, retries after an ``asyncio.sleep`` for up to ``busy_seconds``;
- automatic checkpoints are off on our connections (a checkpoint syncs the database
  file); a background thread checkpoints the WAL after writes instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiosqlite
import orjson
from sqlalchemy import Executable, Row, event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

CHECKPOINT_INTERVAL_SECONDS = 1.0


class _InlineConnection(aiosqlite.Connection):
    """aiosqlite's interface, but each call runs at once in the caller's thread."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> aiosqlite.Connection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Any:
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()


def _json_text(value: Any) -> str:
    """JSON columns written with orjson (SQLAlchemy's drivers take text)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _sqlite_engine(url: str, path: str, begin: str | None, busy_timeout_ms: int) -> AsyncEngine:
    # isolation_level=None takes transaction control away from the driver, so BEGIN is ours.
    connect = partial(sqlite3.connect, path, isolation_level=None, check_same_thread=False)

    async def creator() -> aiosqlite.Connection:
        conn: aiosqlite.Connection = await _InlineConnection(connect, 64)
        return conn

    engine = create_async_engine(
        url,
        async_creator=creator,
        pool_size=8,
        max_overflow=8,
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    if begin is not None:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

    return engine


def _is_busy(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


class _Checkpointer:
    """Moves the WAL into the database file off the event loop, shortly after writes.

    Checkpoints run on worker threads, and a canceled ``await`` does not stop the
    thread, so one lock serialises checkpoints and the final close: the connection
    is never closed under a checkpoint still running.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.dirty = False
        self._task: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def wrote(self) -> None:
        self.dirty = True
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def _checkpoint(self) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _close(self, checkpoint_first: bool) -> None:
        if checkpoint_first:
            self._checkpoint()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS)
            if self.dirty:
                self.dirty = False
                await asyncio.to_thread(self._checkpoint)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._close, self.dirty)
        self.dirty = False


class Database:
    def __init__(self, url: str, busy_seconds: float = 30.0, pool_size: int = 10) -> None:
        self.url = url
        self.busy_seconds = busy_seconds
        self.is_sqlite = url.startswith("sqlite")
        self._checkpointer: _Checkpointer | None = None
        self._lease_engine: AsyncEngine | None = None
        if self.is_sqlite:
            path = make_url(url).database or ":memory:"
            self.write_engine = _sqlite_engine(url, path, "BEGIN IMMEDIATE", busy_timeout_ms=0)
            self.read_engine = _sqlite_engine(url, path, "BEGIN", busy_timeout_ms=2000)
            # One statement is its own snapshot: no BEGIN/ROLLBACK round trip around it.
            self.statement_engine = _sqlite_engine(url, path, None, busy_timeout_ms=2000)
            self._checkpointer = _Checkpointer(path)
        else:
            # A fixed pool: each process holds at most ``pool_size`` connections (and the listener's
            # one and the lease renewals' one), so processes x (pool_size + 2) can be sized below
            # the server's max_connections.
            self.write_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=0, pool_timeout=60,
                json_serializer=_json_text, json_deserializer=orjson.loads,
            )
            self.read_engine = self.write_engine
            # One statement is its own snapshot here too: without BEGIN and ROLLBACK around it,
            # a poll costs one round trip to the server instead of three.
            self.statement_engine = self.write_engine.execution_options(isolation_level="AUTOCOMMIT")
            # The worker's lease renewals get a connection of their own: queued behind thousands
            # of jobs' writes for a busy pool, a heartbeat would let leases lapse and another
            # worker would run (and pay a provider for) the same jobs again.
            self._lease_engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)
            self._lease_writes = async_sessionmaker(self._lease_engine, expire_on_commit=False)
        self._writes = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self._reads = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction that commits on success and rolls back on any exception."""
        if self._write_lock is None:
            async with self._writes() as session, session.begin():
                yield session
            return
        async with self._write_lock, self._writes() as session:
            await self._begin_immediate(session)
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
            finally:
                if self._checkpointer is not None:
                    self._checkpointer.wrote()

    @property
    def lease_engine(self) -> AsyncEngine:
        """The engine :meth:`lease_write` runs on."""
        return self._lease_engine or self.write_engine

    @asynccontextmanager
    async def lease_write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction that never waits for the shared pool (on PostgreSQL): for
        renewing leases, whose lateness costs a duplicate run of every job they hold. SQLite
        has one writer at a time either way: there it is :meth:`write`."""
        if self._lease_engine is None:
            async with self.write() as session:
                yield session
            return
        async with self._lease_writes() as session, session.begin():
            yield session

    async def _begin_immediate(self, session: AsyncSession) -> None:
        """Take SQLite's write lock, yielding to the loop while another process holds it."""
        deadline = time.monotonic() + self.busy_seconds
        delay = 0.002
        while True:
            try:
                await session.connection()
                return
            except OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                await session.rollback()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    async def fetch(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Sequence[Row[Any]]:
        """The rows of one read statement, with no ORM session around it.

        For the hot paths (a poll, a page of the list): a session's identity map, unit of
        work and object loading cost more than SQLite's own work on a primary-key read.
        """
        async with self.statement_engine.connect() as conn:
            return (await conn.execute(statement, params)).all()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._reads() as session:
            yield session

    async def dispose(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.stop()
        await self.write_engine.dispose()
        if self._lease_engine is not None:
            await self._lease_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()
            await self.statement_engine.dispose()
