"""Kill -9 a real ``genplane serve`` with webhooks owed: after a restart every one arrives.

The outbox rows are written in the transaction of the change they report, so a process
that dies without running any shutdown code loses no event: the next process finds
the pending deliveries and sends them under the delivery ids stored before the crash.
The receiver is a real HTTP server on 127.0.0.1 (allowed by ``webhook_allow_hosts``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from genplane.db.engine import Database
from genplane.jobs.fetch import FileFetcher
from genplane.settings import Settings
from genplane.webhooks.endpoints import add_endpoint
from tests.serve_process import Server
from tests.webhook_receiver import Answer, Received, Receiver, verified_payload

WEBHOOK_ENV = {
    "GENPLANE_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    "GENPLANE_WEBHOOK_RETRY_SCHEDULE_SECONDS": "[" + ", ".join(["0.5"] * 20) + "]",
    "GENPLANE_WEBHOOK_POLL_INTERVAL_SECONDS": "0.05",
    # A delivery cut short by the crash keeps its lease for timeout * 3 + 5 = 8 s.
    "GENPLANE_WEBHOOK_TIMEOUT_SECONDS": "1",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()  # not listening until the test starts it
    yield r
    r.stop()


def subscribe(data_dir: Path, url: str) -> tuple[str, str]:
    """Register ``url`` for the quickstart account, as an operator would; (endpoint id, secret)."""

    async def work() -> tuple[str, str]:
        settings = Settings(data_dir=data_dir, webhook_allow_hosts=["127.0.0.1"])
        db = Database(settings.resolved_database_url)
        async with httpx.AsyncClient() as client:
            try:
                with sqlite3.connect(data_dir / "genplane.db") as conn:
                    (account_id,) = conn.execute("SELECT id FROM accounts").fetchone()
                guard = FileFetcher(client, settings.webhook_allow_hosts)
                created = await add_endpoint(db, settings, guard, account_id, url)
            finally:
                await db.dispose()
        return created.endpoint.id, created.secret

    return asyncio.run(work())


def stored(data_dir: Path) -> dict[str, tuple[str, str, int]]:
    """delivery id -> (event type, status, attempts), straight from the database file."""
    with sqlite3.connect(data_dir / "genplane.db") as conn:
        rows = conn.execute(
            "SELECT d.id, e.type, d.status, d.attempts FROM webhook_deliveries d "
            "JOIN webhook_events e ON e.id = d.event_id"
        ).fetchall()
    return {d: (t, s, int(a)) for d, t, s, a in rows}


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def create_and_finish(server: Server, key: str) -> str:
    with httpx.Client(
        base_url=f"{server.base_url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as client:
        r = client.post("/generate/image/local/preview-image", json={"generation_prompt": "a crash"})
        assert r.status_code == 200, r.text
        gid: str = r.json()["data"]["generation_id"]

        def succeeded() -> bool:
            record = client.get(f"/content/{gid}").json()["data"]
            assert record["generation_status"] in ("pending", "processing", "succeeded"), record
            return bool(record["generation_status"] == "succeeded")

        wait_for(succeeded, 30, "the generation to succeed")
        # Refused changes emit nothing: a terminal generation cannot be canceled.
        r = client.post(f"/content/generation/cancel/{gid}")
        assert r.status_code == 409, r.text
    return gid


def check_arrivals(got: list[Received], secret: str, gid: str, expected_ids: set[str]) -> None:
    assert {r.delivery_id for r in got} == expected_ids
    events = set()
    for r in got:
        payload = verified_payload(r, secret)
        assert Webhook(secret).verify(r.body, r.headers) == payload
        assert payload["webhook_delivery_id"] == r.delivery_id
        assert payload["webhook_data"]["generation_id"] == gid
        events.add(payload["webhook_event"])
    assert events == {"generation.started", "generation.completed"}


def test_events_owed_when_the_server_is_killed_are_delivered_after_restart(
    server: Server, receiver: Receiver
) -> None:
    key = server.init()
    endpoint_id, secret = subscribe(server.data_dir, receiver.url)
    assert endpoint_id

    server.start(**WEBHOOK_ENV)
    gid = create_and_finish(server, key)

    def refused_once() -> dict[str, tuple[str, str, int]] | None:
        rows = stored(server.data_dir)
        if len(rows) == 2 and all(status == "pending" and n >= 1 for _, status, n in rows.values()):
            return rows
        return None

    wait_for(refused_once, 20, "both deliveries to be tried against the closed port")
    server.kill()

    before = stored(server.data_dir)
    assert sorted(t for t, _, _ in before.values()) == ["generation.completed", "generation.started"]
    assert {s for _, s, _ in before.values()} == {"pending"}, "the receiver was down: nothing delivered"
    assert receiver.received == []

    receiver.start()
    server.start(**WEBHOOK_ENV)

    def all_delivered() -> bool:
        return {s for _, s, _ in stored(server.data_dir).values()} == {"delivered"}

    wait_for(all_delivered, 30, "the deliveries owed before the crash")
    after = stored(server.data_dir)
    assert set(after) == set(before), "the same deliveries, no new ones"
    got = receiver.delivered()
    check_arrivals(got, secret, gid, set(before))
    assert len(got) == 2, "nothing was sent twice"
    assert all(r.ok for r in receiver.hooks())


def test_a_delivery_cut_short_by_the_crash_is_sent_again_with_its_id(
    server: Server, receiver: Receiver
) -> None:
    key = server.init()
    endpoint_id, secret = subscribe(server.data_dir, receiver.url)
    assert endpoint_id

    arrived = threading.Event()
    release = threading.Event()
    holding = True

    def answer(_: Received) -> Answer:
        if holding:  # hold the first request open until the sender has been killed
            arrived.set()
            release.wait(10)
            return 503, {}
        return 200, {}

    receiver.respond = answer
    receiver.start()
    server.start(**WEBHOOK_ENV)
    gid = create_and_finish(server, key)
    assert arrived.wait(20), "no delivery reached the receiver"
    server.kill()
    holding = False
    release.set()

    before = stored(server.data_dir)
    assert sorted(t for t, _, _ in before.values()) == ["generation.completed", "generation.started"]
    assert {s for _, s, _ in before.values()} == {"pending"}
    # Released, the held request is answered (to a dead socket) and recorded.
    cut_short = wait_for(receiver.hooks, 10, "the held request to be recorded")
    assert {r.delivery_id for r in cut_short} <= set(before)

    server.start(**WEBHOOK_ENV)

    def all_delivered() -> bool:
        return {s for _, s, _ in stored(server.data_dir).values()} == {"delivered"}

    # The killed process's lease (8 s here) has to lapse before anyone sends it again.
    wait_for(all_delivered, 40, "the deliveries cut short by the crash")
    assert set(stored(server.data_dir)) == set(before)
    check_arrivals(receiver.delivered(), secret, gid, set(before))
    # At-least-once: a repeat reuses its delivery id, never a new one.
    assert {r.delivery_id for r in receiver.hooks()} == set(before)
