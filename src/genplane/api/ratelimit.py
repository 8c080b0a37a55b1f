"""Per-account request rates and per-IP failed-authentication rates, on the `limits` library.

The embedded default keeps windows in memory; the storage is swappable for Redis
when several API processes must share them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from genplane.errors import ApiError
from genplane.settings import Settings


@dataclass(frozen=True)
class RateInfo:
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class RequestLimiter:
    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.storage = storage or MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._per_account = RateLimitItemPerMinute(settings.rate_limit_per_minute)
        self._auth_failures = RateLimitItemPerMinute(settings.auth_failures_per_minute)

    async def hit_account(self, account_id: str) -> RateInfo:
        allowed = await self._limiter.hit(self._per_account, "acct", account_id)
        stats = await self._limiter.get_window_stats(self._per_account, "acct", account_id)
        info = RateInfo(self._per_account.amount, max(stats.remaining, 0), math.ceil(stats.reset_time))
        if not allowed:
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise ApiError(
                "bse_rate_limit_exceeded",
                details={"retry_after_seconds": retry, "limit": info.limit},
                headers={**info.headers(), "Retry-After": str(retry)},
            )
        return info

    async def check_auth_ip(self, ip: str) -> None:
        """Refuse an IP that has failed authentication too often, before any key look-up."""
        if not await self._limiter.test(self._auth_failures, "authfail", ip):
            stats = await self._limiter.get_window_stats(self._auth_failures, "authfail", ip)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise ApiError(
                "bse_auth_rate_limited",
                details={"retry_after_seconds": retry, "limit": self._auth_failures.amount},
                headers={"Retry-After": str(retry)},
            )

    async def record_auth_failure(self, ip: str) -> None:
        await self._limiter.hit(self._auth_failures, "authfail", ip)
