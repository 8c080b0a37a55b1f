"""Scaled out under faults: 2 API processes and 3 workers on PostgreSQL, Redis and S3 (moto).

2,000 generations go round-robin over both API processes, half of them for an account with
a webhook endpoint, while one worker is killed with SIGKILL and one API process is
restarted. A client retries a create cut short with the same Idempotency-Key, as any client
should. Afterwards every generation is terminal, charged or refunded exactly once, the
ledger adds up to the balance, stored objects are exactly those the records list, and
every webhook event reached the receiver under its one delivery id.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from genplane.accounts import service as accounts
from genplane.accounts.scopes import parse_scopes
from genplane.credits.money import to_millis
from genplane.db.engine import Database
from genplane.db.migrate import upgrade
from genplane.jobs.fetch import FileFetcher
from genplane.settings import Settings
from genplane.webhooks.endpoints import add_endpoint
from tests.serve_process import BIN, Server, stop_process
from tests.test_storage_s3 import bucket_keys
from tests.test_webhooks_crash import WEBHOOK_ENV
from tests.webhook_receiver import Receiver

TOTAL = 2000
CLIENTS = 24


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def accounts_with_keys(settings: Settings, hook_url: str) -> list[tuple[str, str]]:
    """Two accounts, (account id, key): the first with a webhook endpoint at ``hook_url``."""

    async def work() -> list[tuple[str, str]]:
        db = Database(settings.resolved_database_url)
        made = []
        try:
            for name in ("hooked", "plain"):
                account = await accounts.create_account(
                    db, name, f"{name}@example.com", credits_millis=to_millis("1000")
                )
                issued = await accounts.create_key(
                    db, settings, account.id, name, parse_scopes("full_access", None)
                )
                made.append((account.id, issued.key))
            async with httpx.AsyncClient() as client:
                guard = FileFetcher(client, settings.webhook_allow_hosts)
                await add_endpoint(db, settings, guard, made[0][0], hook_url)
        finally:
            await db.dispose()
        return made

    return asyncio.run(work())


async def submit(apis: list[Server], keys: list[str], on_progress: Any) -> list[str]:
    """Create TOTAL generations round-robin over ``apis`` and ``keys``; their ids."""
    jobs = iter(enumerate(zip(itertools.cycle(apis), itertools.cycle(keys), strict=False)))
    ids: list[str] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for n, (api, key) in jobs:
            if n >= TOTAL:
                return
            idem = str(uuid.uuid4())
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem}
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = await client.post(
                        f"{api.base_url}/v1/generate/image/local/preview-image",
                        json={"generation_prompt": f"fox {n}"}, headers=headers,
                    )
                except httpx.TransportError:  # the process restarting: same key, same generation
                    assert time.monotonic() < deadline, "an API process stayed away"
                    await asyncio.sleep(0.05)
                    continue
                if r.status_code == 503 or r.status_code == 409:  # shutting down / claim in flight
                    await asyncio.sleep(0.05)
                    continue
                assert r.status_code == 200, r.text
                ids.append(r.json()["data"]["generation_id"])
                await on_progress(len(ids))
                break

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
    return ids


async def wait_all_terminal(dsn: str, timeout: float = 240) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(
            "SELECT count(*) FROM generations WHERE status NOT IN ('succeeded','failed','canceled')"
        ):
            assert time.monotonic() < deadline, "generations still active"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def test_two_apis_and_three_workers_lose_nothing_when_a_worker_dies_and_an_api_restarts(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    receiver: Receiver,
    s3_settings: dict[str, Any],
    moto_endpoint: str,
    s3_bucket: str,
) -> None:
    data_dir = tmp_path / "data"  # nothing shared lives here: PostgreSQL, Redis and S3 hold it all
    shared = {
        "GENPLANE_STORAGE_URL": s3_settings["storage_url"],
        "GENPLANE_S3_ENDPOINT_URL": s3_settings["s3_endpoint_url"],
        "GENPLANE_S3_REGION": s3_settings["s3_region"],
        "GENPLANE_DATABASE_URL": database_url,
        "GENPLANE_REDIS_URL": redis_url,
        "GENPLANE_REDIS_PREFIX": f"faults-{uuid.uuid4().hex}:",
        "GENPLANE_SECRET_KEY": secrets.token_urlsafe(32),
        "GENPLANE_LOCAL_PROVIDER_DELAY_SECONDS": "0.3",
        "GENPLANE_RATE_LIMIT_PER_MINUTE": "1000000",
        "GENPLANE_MAX_INFLIGHT_GENERATIONS": "100000",
        **WEBHOOK_ENV,
    }
    settings = Settings(
        data_dir=data_dir, database_url=database_url, secret_key=shared["GENPLANE_SECRET_KEY"],
        webhook_allow_hosts=["127.0.0.1"],
    )
    upgrade(database_url)
    (hooked, hooked_key), (plain, plain_key) = accounts_with_keys(settings, receiver.url)
    apis = [Server(data_dir), Server(data_dir)]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for api in apis:
            api.start(GENPLANE_RUN_WORKER="false", **shared)
        for _ in range(3):
            workers.append(subprocess.Popen(
                [str(BIN / "genplane"), "worker"], env=apis[0].env(**shared), stdin=subprocess.DEVNULL
            ))

        async def faults(created: int) -> None:
            if created == TOTAL // 3 and workers[0].poll() is None:
                workers[0].send_signal(signal.SIGKILL)
            if created == 2 * TOTAL // 3:
                await asyncio.to_thread(apis[1].stop_process)
                await asyncio.to_thread(apis[1].start, GENPLANE_RUN_WORKER="false", **shared)

        ids = asyncio.run(submit(apis, [hooked_key, plain_key], faults))
        assert workers[0].wait(timeout=10) == -signal.SIGKILL
        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        asyncio.run(wait_all_terminal(dsn))
        checks = asyncio.run(audit(dsn, ids, hooked, plain))
        stored = asyncio.run(bucket_keys(moto_endpoint, s3_bucket, prefix="outputs"))
        files = {key.removeprefix("outputs/") for key in stored}
        assert files == checks["listed_files"], "stored objects differ from the records' outputs"
        assert not (data_dir / "files").exists() or not any((data_dir / "files").rglob("*.*"))
        expected_events = checks["events"]
        wait_hooks(receiver, expected_events)
    finally:
        for w in workers:
            stop_process(w)
        for api in apis:
            api.stop()


def wait_hooks(receiver: Receiver, expected: dict[str, str]) -> None:
    """Every event's one delivery id arrived (a resend after a crash repeats the same id)."""
    deadline = time.monotonic() + 120
    while True:
        got = {r.delivery_id for r in receiver.delivered()}
        if got >= set(expected):
            break
        assert time.monotonic() < deadline, f"{len(set(expected) - got)} deliveries never arrived"
        time.sleep(0.1)
    assert got == set(expected), "a delivery id no event has"


async def audit(dsn: str, ids: list[str], hooked: str, plain: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        assert len(ids) == TOTAL and len(set(ids)) == TOTAL
        rows = await conn.fetch("SELECT id, account_id, status, output_files FROM generations")
        assert {r["id"] for r in rows} == set(ids), "a generation no create returned, or one missing"
        statuses = Counter(r["status"] for r in rows)
        assert statuses["succeeded"] >= TOTAL * 0.95, statuses  # the killed worker's jobs resume
        entries = await conn.fetch(
            "SELECT generation_id, kind FROM ledger_entries WHERE generation_id IS NOT NULL"
        )
        kinds: dict[str, list[str]] = {}
        for e in entries:
            kinds.setdefault(e["generation_id"], []).append(e["kind"])
        for r in rows:
            settled = sorted(kinds.get(r["id"], []))
            want = ["charge", "reserve"] if r["status"] == "succeeded" else ["refund", "reserve"]
            assert settled == want, (r["id"], r["status"], settled)
        for account in (hooked, plain):
            balance = await conn.fetchval("SELECT balance_millis FROM accounts WHERE id = $1", account)
            total = await conn.fetchval(
                "SELECT sum(CASE kind WHEN 'reserve' THEN -amount_millis WHEN 'charge' THEN 0 "
                "ELSE amount_millis END) "
                "FROM ledger_entries WHERE account_id = $1", account,
            )
            assert balance == total, (account, balance, total)
        listed = {f["key"] for r in rows for f in json.loads(r["output_files"] or "null") or []}
        deliveries = await conn.fetch(
            "SELECT d.id, e.type, d.status, e.account_id FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.id = d.event_id"
        )
        assert {d["account_id"] for d in deliveries} == {hooked}
        per_gen_events = Counter(d["type"] for d in deliveries)
        hooked_gens = sum(1 for r in rows if r["account_id"] == hooked)
        assert per_gen_events["generation.started"] >= hooked_gens * 0.95
        return {"listed_files": listed, "events": {d["id"]: d["type"] for d in deliveries}}
    finally:
        await conn.close()
