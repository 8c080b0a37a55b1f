"""Per-account request rates by route group and plan, and per-IP failed-authentication rates,
on the `limits` library.

Failed authentications are counted per client IP *and* presented credential (a digest of
the ``Authorization`` value, or none), with a higher ceiling for the IP as a whole: a
client that keeps failing is refused before any key look-up, while other keys behind the
same address (a NAT, a proxy) keep working.

Each account has one window per route group (``generate``, ``read``, ``library``), so a
client that exhausts its reads can still create, and the reverse. The size of each window
comes from the account's plan (``GENPLANE_RATE_LIMITS``), falling back to
``GENPLANE_RATE_LIMIT_PER_MINUTE``.

The embedded default keeps windows in memory; the storage is swappable for Redis
when several API processes must share them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from genplane.contract.errors import ApiError
from genplane.contract.rate_headers import rate_headers, refusal_headers
from genplane.settings import RouteGroup, Settings

_GENERATE_PREFIX = "/v1/generate/"
_LIBRARY_PREFIXES = ("/v1/library/", "/v1/health/")


@lru_cache(maxsize=256)
def route_group(method: str, path: str) -> RouteGroup:
    """The group of an operation, from its method and path template.

    ``generate``: the two creates; ``library``: the library and health operations;
    ``read``: everything else (content, list, delete, cancel, status, usage, account,
    billing, estimate).
    """
    if method == "POST" and path.startswith(_GENERATE_PREFIX):
        return "generate"
    if path.startswith(_LIBRARY_PREFIXES):
        return "library"
    return "read"


def shared_limit_storage(settings: Settings) -> Storage | None:
    """The windows' Redis storage when ``GENPLANE_REDIS_URL`` is set (every API process then
    counts into the same windows), else None: this process's memory."""
    if not settings.redis_url:
        return None
    url = settings.redis_url
    # limits names a Redis socket path redis+unix://, where Redis's own clients say unix://.
    uri = "async+redis+" + url if url.startswith("unix://") else "async+" + url
    return RedisStorage(uri, implementation="redispy", key_prefix=f"{settings.redis_prefix}limits")


@dataclass(frozen=True)
class RateInfo:
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        return rate_headers(self.limit, self.remaining, self.reset)


class RequestLimiter:
    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.settings = settings
        self.storage = storage or MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._items: dict[tuple[str, RouteGroup], RateLimitItem] = {}
        self._auth_failures = RateLimitItemPerMinute(settings.auth_failures_per_minute)
        self._ip_auth_failures = RateLimitItemPerMinute(settings.auth_failures_per_ip_per_minute)

    @property
    def backend(self) -> str:
        """What the limits live in, as ``/v1/health/cache`` names it: shared ("redis", which
        covers the cluster, Sentinel and Valkey storages) or this process's "memory"."""
        return "redis" if isinstance(self.storage, RedisStorage) else "memory"

    def item(self, plan: str, group: RouteGroup) -> RateLimitItem:
        found = self._items.get((plan, group))
        if found is None:
            if len(self._items) >= 1024:  # plans are few; never let odd values grow this
                self._items.clear()
            amount = self.settings.rate_limit_for(plan, group)
            found = self._items[(plan, group)] = RateLimitItemPerMinute(amount)
        return found

    async def hit_account(self, account_id: str, plan: str = "", group: RouteGroup = "read") -> RateInfo:
        """Count one request of ``account_id`` in ``group``; 429 when its window is full."""
        item = self.item(plan, group)
        allowed = await self._limiter.hit(item, "acct", group, account_id)
        stats = await self._limiter.get_window_stats(item, "acct", group, account_id)
        info = RateInfo(item.amount, max(stats.remaining, 0), math.ceil(stats.reset_time))
        if not allowed:
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise ApiError(
                "bse_rate_limit_exceeded",
                f"Too many requests to the '{group}' operations: the limit is {info.limit} per minute.",
                details={"retry_after_seconds": retry, "limit": info.limit, "group": group},
                headers={**info.headers(), "Retry-After": str(retry)},
            )
        return info

    async def check_auth(self, ip: str, presented: str) -> bool:
        """Before any key look-up: refuse a (client IP, presented credential) pair that has failed
        too often. Returns whether the IP as a whole is over its ceiling, in which case a failure
        of this request is refused with :meth:`ip_limited` rather than a 401 (a key that works is
        still served: one client behind a shared address must not lock out the others)."""
        item = self._auth_failures
        if not await self._limiter.test(item, "authfail", ip, presented):
            raise await self._auth_limited(item, "authfail", ip, presented)
        return not await self._limiter.test(self._ip_auth_failures, "authfail-ip", ip)

    async def ip_limited(self, ip: str) -> ApiError:
        return await self._auth_limited(self._ip_auth_failures, "authfail-ip", ip)

    async def record_auth_failure(self, ip: str, presented: str) -> None:
        await self._limiter.hit(self._auth_failures, "authfail", ip, presented)
        await self._limiter.hit(self._ip_auth_failures, "authfail-ip", ip)

    async def _auth_limited(self, item: RateLimitItem, *identifiers: str) -> ApiError:
        stats = await self._limiter.get_window_stats(item, *identifiers)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        return ApiError(
            "bse_auth_rate_limited",
            details={"retry_after_seconds": retry, "limit": item.amount},
            headers=refusal_headers(item.amount, retry),
        )
