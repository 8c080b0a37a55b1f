"""Database access with one rule for writers.

SQLite allows one writer at a time and fails a deferred transaction that tries to
upgrade its lock, so on SQLite every write transaction starts with BEGIN IMMEDIATE
and in-process writers queue on an asyncio lock instead of spinning on
``database is locked``. Readers use a separate engine and never wait for writers
(WAL). On PostgreSQL both paths are the same pooled engine.

SQLite reads run inline on the event loop instead of on aiosqlite's per-connection
thread. A primary-key read costs microseconds in SQLite itself but about a millisecond
through the thread hand-offs, which capped a polling endpoint near a thousand requests
per second. A WAL reader never waits for a writer, so an inline read does not stall
the loop; writes keep the thread, because BEGIN IMMEDIATE may have to wait for
another process's write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


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


def _sqlite_connector(path: str, inline: bool) -> Callable[[], Any]:
    # isolation_level=None takes transaction control away from the driver, so BEGIN is ours.
    connect = partial(sqlite3.connect, path, timeout=30, isolation_level=None, check_same_thread=False)

    async def creator() -> aiosqlite.Connection:
        conn = _InlineConnection(connect, 64) if inline else aiosqlite.Connection(connect, 64)
        if not inline:
            conn._thread.daemon = True
        return await conn

    return creator


def _sqlite_engine(url: str, begin: str, inline: bool) -> AsyncEngine:
    path = make_url(url).database or ":memory:"
    engine = create_async_engine(
        url, async_creator=_sqlite_connector(path, inline), pool_size=8, max_overflow=8
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.write_engine = _sqlite_engine(url, "BEGIN IMMEDIATE", inline=False)
            self.read_engine = _sqlite_engine(url, "BEGIN", inline=True)
        else:
            self.write_engine = create_async_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)
            self.read_engine = self.write_engine
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
        async with self._write_lock, self._writes() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._reads() as session:
            yield session

    async def dispose(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()
