"""The firewall's blocks, rejection windows and verified keys in Redis, shared by every API process.

With several API processes a block must hold wherever the blocked client's next request
lands, and rejections counted by one process must add up with the others'. Each step is
one atomic server-side script, so concurrent processes never lose a count or shorten a
block. Keys expire by themselves (no sweeping): a window lives ``window_seconds``, a block
its length, a verified key ``VERIFIED_SECONDS``. Subjects are already digests or
addresses (:mod:`genplane.api.blocklist`), never a token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from genplane.api.blocklist import VERIFIED_REFRESH_SECONDS, VERIFIED_SECONDS
from genplane.settings import Settings

# KEYS: hits, block. ARGV: now ms, window ms, max rejections, block ms, unique member.
# Returns the block's length in ms when this rejection started one, else 0.
_REJECT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('ZCARD', KEYS[1]) <= tonumber(ARGV[3]) then
  return 0
end
redis.call('DEL', KEYS[1])
local left = redis.call('PTTL', KEYS[2])
if left < tonumber(ARGV[4]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
end
return tonumber(ARGV[4])
"""
# KEYS: block. ARGV: ms. A block is only ever lengthened.
_BLOCK = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class RedisFirewallStore:
    """:class:`genplane.api.blocklist.FirewallStore` on Redis."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        max_rejections: int,
        window_seconds: float,
        block_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.prefix = prefix + "firewall:"
        self.max_rejections = max_rejections
        self.window_ms = max(1, int(window_seconds * 1000))
        self.block_ms = max(1, int(block_seconds * 1000))
        self.clock = clock
        self._reject: Any = redis.register_script(_REJECT)
        self._block: Any = redis.register_script(_BLOCK)
        #: Verified marks this process wrote lately, so a busy key costs one write a minute.
        self._marked: dict[str, tuple[float, str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis) -> RedisFirewallStore:
        return cls(
            redis,
            settings.redis_prefix,
            settings.firewall_max_rejections,
            settings.firewall_window_seconds,
            settings.firewall_block_seconds,
        )

    async def blocked_for(self, subject: str) -> float:
        left = int(await self.redis.pttl(self.prefix + "block:" + subject))
        return left / 1000 if left > 0 else 0.0

    async def record_rejection(self, subject: str) -> float:
        started = await self._reject(
            keys=[self.prefix + "hits:" + subject, self.prefix + "block:" + subject],
            args=[int(self.clock() * 1000), self.window_ms, self.max_rejections, self.block_ms,
                  uuid.uuid4().hex],
        )
        return int(started) / 1000

    async def block(self, subject: str, seconds: float) -> None:
        await self._block(keys=[self.prefix + "block:" + subject], args=[max(1, int(seconds * 1000))])

    async def mark_verified(self, subject: str, account_id: str) -> None:
        now = time.monotonic()
        seen = self._marked.get(subject)
        if seen is not None and now - seen[0] < VERIFIED_REFRESH_SECONDS and seen[1] == account_id:
            return
        await self.redis.set(self.prefix + "verified:" + subject, account_id, ex=int(VERIFIED_SECONDS))
        if len(self._marked) > 100_000:
            self._marked.clear()
        self._marked[subject] = (now, account_id)

    async def verified_account(self, subject: str) -> str | None:
        seen = self._marked.get(subject)
        if seen is not None and time.monotonic() - seen[0] < VERIFIED_REFRESH_SECONDS:
            return seen[1]  # this process saw the key work lately: no round trip per request
        value = await self.redis.get(self.prefix + "verified:" + subject)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
