"""Readiness: whether this process can do its work now, for an orchestrator's ``/readyz``.

Three checks, run together, each bounded by a short timeout so a hung dependency answers
"not ready" instead of hanging the probe: the database answers ``SELECT 1``, Redis (when
configured) answers ``PING``, storage passes its live write-read-delete probe. A failed
check is reported by name only: its reason (library text, hosts) goes to the log.

The probe is unauthenticated and exempt from the firewall's blocks, so the verdict is
shared: probes arriving together wait for one run of the checks, and a verdict is reused for
``reuse_seconds``; nobody can turn a flood of probes into a flood of storage writes.
Once shutdown has begun, the process is not ready, whatever the checks say.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from sqlalchemy import text

from genplane.api.services import Services

log = structlog.get_logger("genplane.readiness")

#: How long each check may take.
CHECK_TIMEOUT_SECONDS = 2.0
#: How long a verdict answers further probes.
REUSE_SECONDS = 1.0

_SELECT_ONE = text("SELECT 1")


class Readiness:
    def __init__(
        self,
        services: Services,
        timeout: float = CHECK_TIMEOUT_SECONDS,
        reuse_seconds: float = REUSE_SECONDS,
    ) -> None:
        self.services = services
        self.timeout = timeout
        self.reuse_seconds = reuse_seconds
        #: Set when the app's shutdown begins: from then on every probe answers not ready.
        self.stopping = False
        self._verdict: tuple[str, ...] = ()
        self._checked_at = -float("inf")
        self._running: asyncio.Future[tuple[str, ...]] | None = None

    async def failed_checks(self) -> tuple[str, ...]:
        """The names of the checks that failed; empty when the process is ready."""
        if time.monotonic() - self._checked_at < self.reuse_seconds:
            return self._verdict
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        # Shielded: a probe that gives up does not cancel the run the others wait for.
        return await asyncio.shield(self._running)

    async def _run(self) -> tuple[str, ...]:
        svc = self.services
        checks: dict[str, Callable[[], Awaitable[object]]] = {
            "database": lambda: svc.db.fetch(_SELECT_ONE),
            "storage": self._storage,
        }
        if svc.redis is not None:
            redis = svc.redis
            checks["redis"] = lambda: redis.ping()
        names = list(checks)
        passed = await asyncio.gather(*(self._passes(name, checks[name]) for name in names))
        verdict = tuple(name for name, ok in zip(names, passed, strict=True) if not ok)
        self._verdict, self._checked_at = verdict, time.monotonic()
        return verdict

    async def _passes(self, name: str, check: Callable[[], Awaitable[object]]) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await check()
        except TimeoutError:
            log.warning("readiness_check_failed", check=name, error="timeout", seconds=self.timeout)
            return False
        except Exception as exc:
            log.warning("readiness_check_failed", check=name, error=type(exc).__name__, detail=repr(exc))
            return False
        return True

    async def _storage(self) -> None:
        health = await self.services.store.health()
        if not health.healthy:
            raise _Unhealthy(f"{health.error}: {health.detail}")


class _Unhealthy(Exception):
    """A dependency that answered, but unwell."""
