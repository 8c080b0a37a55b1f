"""Processes that share one PostgreSQL database hear each other through it (NOTIFY/LISTEN).

Two API-only apps and a worker of its own stand for three processes (each has its own
in-memory queue, waiters and auth cache, exactly as separate processes would). Every
interval that could also explain the outcome (the sweep, the lease heartbeat, the
``Prefer: wait`` re-read, the auth cache's lifetime) is set far beyond the test's
deadlines, so what is asserted can only come from the notification.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from genplane.accounts import service as accounts
from genplane.api.app import build_services
from genplane.api.services import Services
from genplane.db.engine import Database
from genplane.db.migrate import upgrade
from genplane.settings import Settings
from tests.conftest import Caller, Harness
from tests.test_credits import IMAGE_PRICE, balance, credits_str

#: Longer than any wait below: only a notification can make these tests pass in time.
NEVER = 300.0
QUIET = {
    "sweep_interval_seconds": NEVER,
    "lease_seconds": NEVER,
    "prefer_wait_recheck_seconds": NEVER,
    "auth_cache_seconds": NEVER,
}


@pytest.fixture
def database(database_url: str) -> dict[str, Any]:
    """PostgreSQL only: these signals are PostgreSQL's (on SQLite genplane runs one process).
    Asked for first by each test, so the database outlives the apps that use it."""
    return {"database_url": database_url}


@pytest.fixture
async def worker_factory(
    settings_factory: Callable[..., Settings], database: dict[str, Any]
) -> AsyncIterator[Callable[..., Any]]:
    """Start worker-only services (what ``genplane worker`` runs) on the test's database."""
    started: list[Services] = []

    async def start(**overrides: Any) -> Services:
        settings = settings_factory(**database, **QUIET, **overrides)
        upgrade(settings.resolved_database_url)
        services = build_services(settings)
        await services.start(api=False, worker=True)
        started.append(services)
        return services

    yield start
    for services in started:
        await services.stop()


async def apis(
    harness_factory: Callable[..., Any], database: dict[str, Any], **overrides: Any
) -> list[Harness]:
    return [await harness_factory(run_worker=False, **database, **QUIET, **overrides) for _ in range(2)]


def on(h: Harness, caller: Caller) -> Caller:
    return Caller(h.client, caller.account_id, caller.key, caller.key_id)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_job_created_through_one_process_is_run_by_a_worker_in_another(
    database: dict[str, Any], harness_factory: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    a, b = await apis(harness_factory, database)
    worker = await worker_factory()
    caller = await a.caller()
    created = await on(b, caller).create_image()
    assert created.status_code == 200, created.text
    gid = created.json()["data"]["generation_id"]
    record = await on(a, caller).wait(gid, timeout=15)
    assert record["generation_status"] == "succeeded"
    assert worker.worker.in_flight == 0


async def test_prefer_wait_in_one_process_is_woken_by_a_worker_in_another(
    database: dict[str, Any], harness_factory: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    a, b = await apis(harness_factory, database)
    await worker_factory(local_provider_delay_seconds=0.5)
    caller = await a.caller()
    gid = (await on(a, caller).create_image()).json()["data"]["generation_id"]
    started = time.monotonic()
    held = await on(b, caller).get(f"/v1/content/{gid}", headers={"Prefer": "wait=30"})
    assert held.status_code == 200
    assert held.json()["data"]["generation_status"] == "succeeded"
    assert time.monotonic() - started < 15  # woken, not timed out (nor re-read: NEVER)


async def test_a_cancel_through_one_process_stops_the_job_in_a_worker_of_another(
    database: dict[str, Any], harness_factory: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    a, b = await apis(harness_factory, database)
    worker = await worker_factory(local_provider_delay_seconds=NEVER)
    caller = await a.caller(credits="5")
    gid = (await on(a, caller).create_image()).json()["data"]["generation_id"]
    await until(lambda: worker.worker.in_flight == 1)
    canceled = await on(b, caller).post(f"/v1/content/generation/cancel/{gid}")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["data"]["credits_refunded"] is True
    await until(lambda: worker.worker.in_flight == 0)  # stopped there, long before any heartbeat
    record = (await on(a, caller).get(f"/v1/content/{gid}")).json()["data"]
    assert record["generation_status"] == "canceled"


async def test_a_stopping_worker_hands_its_jobs_to_another_at_once(
    database: dict[str, Any], harness_factory: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    [a, _] = await apis(harness_factory, database)
    first = await worker_factory(local_provider_delay_seconds=NEVER)
    caller = await a.caller()
    gid = (await on(a, caller).create_image()).json()["data"]["generation_id"]
    await until(lambda: first.worker.in_flight == 1)
    second = await worker_factory(local_provider_delay_seconds=NEVER)
    await first.worker.stop()  # hands the lease back: announced to the second worker
    await until(lambda: second.worker.in_flight == 1)
    record = (await on(a, caller).get(f"/v1/content/{gid}")).json()["data"]
    assert record["generation_status"] == "processing"


async def test_a_key_revoked_by_another_process_is_refused_at_once(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    a, b = await apis(harness_factory, database)
    caller = await a.caller()
    for h in (a, b):  # both processes have the key in their cache (for NEVER seconds)
        assert (await on(h, caller).get("/v1/status")).status_code == 200
    cli = Database(a.services.settings.resolved_database_url)  # as `genplane keys revoke` does
    try:
        assert await accounts.revoke_key(cli, caller.key_id)
    finally:
        await cli.dispose()
    for h in (a, b):
        deadline = time.monotonic() + 10
        while (status := (await on(h, caller).get("/v1/status")).status_code) == 200:
            assert time.monotonic() < deadline, "the revoked key is still accepted"
            await asyncio.sleep(0.01)
        assert status == 401


async def test_processes_starting_together_migrate_once(
    database: dict[str, Any], settings_factory: Callable[..., Settings]
) -> None:
    url = settings_factory(**database).resolved_database_url
    migrate = "import sys; from genplane.db.migrate import upgrade; upgrade(sys.argv[1])"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", migrate, url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    outcomes = [(await p.wait(), (await p.stderr.read()).decode()[-500:]) for p in procs if p.stderr]
    assert [o for o in outcomes if o[0] != 0] == []


async def test_200_concurrent_reservations_over_two_processes_never_overdraw(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    a, b = await apis(harness_factory, database, max_inflight_generations=1000)
    affordable, remainder = 37, IMAGE_PRICE - 1
    caller = await a.caller(credits=credits_str(affordable * IMAGE_PRICE + remainder))
    responses = await asyncio.gather(*(on(h, caller).create_image() for h in (a, b) * 100))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: affordable, 402: 200 - affordable}, statuses
    assert await balance(caller) == remainder
    served_by = {i % 2 for i, r in enumerate(responses) if r.status_code == 200}
    assert served_by == {0, 1}, "both processes admitted some"
