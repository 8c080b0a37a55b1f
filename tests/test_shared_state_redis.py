"""With GENPLANE_REDIS_URL, API processes share rate-limit windows and firewall state.

Two apps on one database and one Redis stand for two API processes: a limit of N a minute
is N in total across both, a subject one blocks the other refuses, and rejections counted
by each add up to one block. Each test writes under its own key prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from genplane.api.blocklist import key_subject
from genplane.api.blocklist_redis import RedisFirewallStore
from tests.conftest import Caller, Harness
from tests.test_firewall import assert_error


async def two_processes(
    harness_factory: Callable[..., Any], redis_url: str, **overrides: Any
) -> tuple[Harness, Harness]:
    shared = {"redis_url": redis_url, "redis_prefix": f"test-{uuid.uuid4().hex}:", "run_worker": False}
    first: Harness = await harness_factory(**shared, **overrides)
    second: Harness = await harness_factory(**shared, **overrides)
    return first, second


def on(h: Harness, caller: Caller) -> Caller:
    return Caller(h.client, caller.account_id, caller.key, caller.key_id)


async def test_a_limit_is_shared_by_every_process(
    harness_factory: Callable[..., Any], redis_url: str
) -> None:
    a, b = await two_processes(harness_factory, redis_url, rate_limit_per_minute=60)
    caller = await a.caller()
    statuses = [(await on(h, caller).get("/v1/status")).status_code for h in (a, b) * 35]
    assert statuses == [200] * 60 + [429] * 10
    refused = await on(b, caller).get("/v1/status")
    assert refused.status_code == 429 and refused.headers["X-RateLimit-Limit"] == "60"
    assert refused.headers["X-RateLimit-Remaining"] == "0"


async def test_a_block_from_one_process_holds_in_the_other(
    harness_factory: Callable[..., Any], redis_url: str
) -> None:
    a, b = await two_processes(harness_factory, redis_url)
    caller = await a.caller()
    assert (await on(b, caller).get("/v1/status")).status_code == 200
    await a.services.blocklist.block(key_subject(caller.key), 120)
    r = await on(b, caller).get("/v1/status")
    assert_error(r, 403, "bse_request_blocked")
    assert 118 <= int(r.headers["Retry-After"]) <= 120


async def test_rejections_counted_by_both_processes_add_up_to_one_block(
    harness_factory: Callable[..., Any], redis_url: str
) -> None:
    a, b = await two_processes(harness_factory, redis_url, firewall_max_rejections=10)
    statuses = [(await h.client.get(f"/v1/undeclared/{i}")).status_code for i, h in enumerate((a, b) * 8)]
    assert statuses == [404] * 11 + [403] * 5  # the 11th rejection, wherever it landed, blocks


async def test_health_cache_names_redis(harness_factory: Callable[..., Any], redis_url: str) -> None:
    a, _ = await two_processes(harness_factory, redis_url)
    caller = await a.caller()
    data = (await caller.get("/v1/health/cache")).json()["data"]
    assert data["service"] == "redis" and data["healthy"] is True


async def test_store_windows_and_blocks_only_lengthen(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    now = [1_000_000.0]
    store = RedisFirewallStore(redis, f"test-{uuid.uuid4().hex}:", 3, 10.0, 60.0, clock=lambda: now[0])
    try:
        assert [await store.record_rejection("ip:192.0.2.1") for _ in range(3)] == [0.0] * 3
        now[0] += 11  # the three left the window
        assert [await store.record_rejection("ip:192.0.2.1") for _ in range(3)] == [0.0] * 3
        assert await store.record_rejection("ip:192.0.2.1") == 60.0
        assert 59 < await store.blocked_for("ip:192.0.2.1") <= 60
        await store.block("ip:192.0.2.1", 5)  # shorter: the block stands
        assert await store.blocked_for("ip:192.0.2.1") > 59
        await store.block("ip:192.0.2.1", 600)
        assert await store.blocked_for("ip:192.0.2.1") > 599
        assert await store.blocked_for("ip:192.0.2.2") == 0.0
        assert await store.verified_account("key:abc") is None
        await store.mark_verified("key:abc", "acct_1")
        assert await store.verified_account("key:abc") == "acct_1"
    finally:
        await redis.aclose()


async def exchange(*processes: Harness) -> None:
    """One exchange of anomaly counts by each process, in order (instead of their timers)."""
    for h in processes:
        shared = h.services.anomalies.analytics.shared
        assert shared is not None
        await shared.exchange()


async def sharing_counts(
    harness_factory: Callable[..., Any], redis_url: str, **overrides: Any
) -> tuple[Harness, Harness]:
    """Two processes flagging enumeration at 10 404s, exchanging counts only when told."""
    return await two_processes(
        harness_factory,
        redis_url,
        anomaly_enumeration_threshold=10,
        anomaly_share_interval_seconds=3600,
        **overrides,
    )


async def test_a_storm_spread_over_processes_is_found(
    harness_factory: Callable[..., Any], redis_url: str
) -> None:
    """Enumeration split evenly between two processes: neither reaches the threshold alone."""
    a, b = await sharing_counts(harness_factory, redis_url, anomaly_auto_block=["id_enumeration"])
    caller = await a.caller()
    missing = [f"/v1/content/{uuid.uuid4()}" for _ in range(12)]
    for i, path in enumerate(missing[:10]):
        assert (await on((a, b)[i % 2], caller).get(path)).status_code == 404
    # Five each, ten in all: alone, each process is under the threshold.
    assert a.services.anomalies.analytics.open_flags() == []
    assert b.services.anomalies.analytics.open_flags() == []
    await exchange(a, b, a)
    assert a.services.anomalies.analytics.shared.peers(caller.key_id, "1") == 5  # type: ignore[union-attr]
    # The next one, on either process, is the eleventh of the window: the key is blocked everywhere.
    assert (await on(a, caller).get(missing[10])).status_code == 404
    (flag,) = a.services.anomalies.analytics.open_flags()
    assert flag.pattern == "id_enumeration" and flag.count == 11
    assert_error(await on(b, caller).get("/v1/status"), 403, "bse_request_blocked")


async def test_counts_outside_the_window_are_not_shared(
    harness_factory: Callable[..., Any], redis_url: str
) -> None:
    a, b = await sharing_counts(harness_factory, redis_url, anomaly_enumeration_window_seconds=30)
    caller = await a.caller()
    for _ in range(6):
        assert (await on(b, caller).get(f"/v1/content/{uuid.uuid4()}")).status_code == 404
    assert (await on(a, caller).get(f"/v1/content/{uuid.uuid4()}")).status_code == 404
    await exchange(b, a)
    shared_a = a.services.anomalies.analytics.shared
    assert shared_a is not None and shared_a.peers(caller.key_id, "1") == 6
    later = shared_a.clock() + 40
    shared_a.clock = lambda: later  # the window has passed for b's six (still in Redis)
    assert (await on(a, caller).get(f"/v1/content/{uuid.uuid4()}")).status_code == 404
    await exchange(a)
    assert shared_a.peers(caller.key_id, "1") == 0
