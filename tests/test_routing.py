"""`fastest` routing and the circuit breaker, computed from recorded attempts."""

from __future__ import annotations

from datetime import timedelta

from genplane.catalog.loader import ModelEntry
from genplane.clock import utcnow
from genplane.db.models import ProviderAttempt
from genplane.generations.routing import ProviderRanker
from genplane.providers.stats import BREAKER_FAILURES
from tests.conftest import Harness

MODEL = ModelEntry.model_validate(
    {
        "model_identifier": "test/multi",
        "model_type": "image",
        "model_pricing": 0.01,
        "schema": {
            "generation_ratio": ["1:1"],
            "generation_output_format": ["png"],
            "generation_output_number": 1,
        },
        "providers": {"a": {"model_id": "a-1"}, "b": {"model_id": "b-1"}, "c": {"model_id": "c-1"}},
    }
)


async def record(
    harness: Harness, provider: str, outcome: str, latency_ms: float, n: int = 1, age_s: float = 1.0
) -> None:
    now = utcnow()
    async with harness.services.db.write() as s:
        for _ in range(n):
            started = now - timedelta(seconds=age_s, milliseconds=latency_ms)
            s.add(
                ProviderAttempt(
                    generation_id="g",
                    account_id="acct",
                    provider=provider,
                    model_identifier=MODEL.model_identifier,
                    outcome=outcome,
                    started_at=started,
                    finished_at=now - timedelta(seconds=age_s),
                    latency_ms=latency_ms,
                    estimated_cost_millis=10,
                )
            )


async def test_without_history_the_catalogue_order_stands(harness: Harness) -> None:
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    assert await ranker.rank(MODEL, ["a", "b", "c"]) == ["a", "b", "c"]


async def test_faster_and_healthier_provider_goes_first(harness: Harness) -> None:
    await record(harness, "a", "used", 9000, n=5)
    await record(harness, "a", "failed", 2000, n=3)
    await record(harness, "b", "used", 1500, n=8)
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    assert await ranker.rank(MODEL, ["a", "b"]) == ["b", "a"]


async def test_success_rate_outweighs_a_small_speed_edge(harness: Harness) -> None:
    await record(harness, "a", "failed", 1000, n=8)  # fast but fails 80% ...
    await record(harness, "a", "used", 1000, n=2)  # ... and just succeeded, so its breaker is closed
    await record(harness, "b", "used", 1500, n=10)
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    assert await ranker.rank(MODEL, ["a", "b"]) == ["b", "a"]


async def test_wasted_work_counts_against_a_provider(harness: Harness) -> None:
    await record(harness, "a", "used", 1000, n=5)
    await record(harness, "a", "discarded", 1000, n=5)
    await record(harness, "b", "used", 1200, n=5)
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    assert await ranker.rank(MODEL, ["a", "b"]) == ["b", "a"]


async def test_provider_without_history_keeps_a_middle_place(harness: Harness) -> None:
    await record(harness, "a", "used", 20000, n=5)
    await record(harness, "c", "used", 1000, n=5)
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    # b has no history: neither starved behind the slow a nor put ahead of the fast c.
    assert await ranker.rank(MODEL, ["a", "b", "c"]) == ["c", "b", "a"]


async def test_open_breaker_is_skipped_and_closes_after_cooldown(harness: Harness) -> None:
    await record(harness, "a", "used", 500, n=10, age_s=120)
    await record(harness, "a", "failed", 500, n=BREAKER_FAILURES, age_s=1)
    await record(harness, "b", "used", 5000, n=10)
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    assert await ranker.breaker_open() == {"a"}
    assert await ranker.rank(MODEL, ["a", "b"]) == ["b"]


async def test_breaker_needs_consecutive_failures(harness: Harness) -> None:
    await record(harness, "a", "failed", 500, n=BREAKER_FAILURES - 1, age_s=2)
    await record(harness, "a", "used", 500, n=1, age_s=1)  # the newest attempt succeeded
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    assert await ranker.breaker_open() == set()


async def test_old_failures_do_not_keep_the_breaker_open(harness: Harness) -> None:
    await record(harness, "a", "failed", 500, n=BREAKER_FAILURES, age_s=300)
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    assert await ranker.breaker_open() == set()


async def test_when_every_breaker_is_open_all_are_still_tried(harness: Harness) -> None:
    for p in ("a", "b"):
        await record(harness, p, "failed", 500, n=BREAKER_FAILURES, age_s=1)
    ranker = ProviderRanker(harness.services.db, cache_seconds=0)
    assert sorted(await ranker.rank(MODEL, ["a", "b"])) == ["a", "b"]
