"""Kill -9 the whole server mid-job and restart it: nothing stays in flight, no money is lost.

The server runs as a real ``genplane serve`` subprocess on loopback, so the test covers
what an operator sees: a process that dies without any shutdown code running.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_process import Server

TERMINAL = {"succeeded", "failed", "canceled"}


def _client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.base_url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def _create(client: httpx.Client, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = client.post("/generate/image/local/preview-image", json={"generation_prompt": f"crash test {i}"})
        assert r.status_code == 200, r.text
        ids.append(r.json()["data"]["generation_id"])
    return ids


def _statuses(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / "genplane.db") as conn:
        return dict(conn.execute("SELECT id, status FROM generations").fetchall())


def _wait_until_processing(client: httpx.Client, ids: list[str], every: bool = False) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = [client.get(f"/content/{gid}").json()["data"]["generation_status"] for gid in ids]
        if (all if every else any)(s == "processing" for s in states):
            return
        time.sleep(0.05)
    raise AssertionError("no generation reached processing")


def _wait_all_terminal(client: httpx.Client, ids: list[str], timeout: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        records = [client.get(f"/content/{gid}").json()["data"] for gid in ids]
        if all(r["generation_status"] in TERMINAL for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"still in flight: {[r['generation_status'] for r in records]}")
        time.sleep(0.1)


def _assert_money_consistent(data_dir: Path) -> None:
    """balance == adds - reserves + refunds, and each generation is settled exactly once."""
    with sqlite3.connect(data_dir / "genplane.db") as conn:
        for account_id, balance in conn.execute("SELECT id, balance_millis FROM accounts"):
            sums = dict(
                conn.execute(
                    "SELECT kind, SUM(amount_millis) FROM ledger_entries WHERE account_id = ? GROUP BY kind",
                    (account_id,),
                ).fetchall()
            )
            assert balance == sums.get("add", 0) - sums.get("reserve", 0) + sums.get("refund", 0)
            assert balance >= 0
        for gid, settled in conn.execute("SELECT id, credits_settled FROM generations"):
            rows = conn.execute("SELECT kind FROM ledger_entries WHERE generation_id = ?", (gid,))
            kinds = [k for (k,) in rows]
            assert sorted(kinds) in (["charge", "reserve"], ["refund", "reserve"]), (gid, kinds)
            assert settled


def test_kill_during_processing_then_restart_resumes_every_job(server: Server) -> None:
    key = server.init()
    server.start(GENPLANE_LOCAL_PROVIDER_DELAY_SECONDS="3")
    with _client(server, key) as client:
        ids = _create(client, 4)
        _wait_until_processing(client, ids)
    server.kill()

    in_flight = {gid: s for gid, s in _statuses(server.data_dir).items() if s not in TERMINAL}
    assert in_flight, "the kill should have left jobs in flight"

    server.start(GENPLANE_LOCAL_PROVIDER_DELAY_SECONDS="0.1")
    with _client(server, key) as client:
        records = _wait_all_terminal(client, ids)
        assert [r["generation_status"] for r in records] == ["succeeded"] * len(ids)
        for record in records:
            files = record["generation_output_file"]
            assert isinstance(files, list) and files
            assert client.get(str(files[0])).status_code == 200
        billing = client.get("/user/billing").json()["data"]
    _assert_money_consistent(server.data_dir)
    # 10 starting credits, four charged images.
    assert billing["billing_credit_balance"] == pytest.approx(10 - 4 * 0.002)


def test_job_interrupted_too_often_is_failed_and_refunded(server: Server) -> None:
    key = server.init()
    server.start(GENPLANE_LOCAL_PROVIDER_DELAY_SECONDS="30", GENPLANE_MAX_JOB_CLAIMS="1")
    with _client(server, key) as client:
        ids = _create(client, 2)
        _wait_until_processing(client, ids, every=True)
    server.kill()

    server.start(GENPLANE_LOCAL_PROVIDER_DELAY_SECONDS="30", GENPLANE_MAX_JOB_CLAIMS="1")
    with _client(server, key) as client:
        records = _wait_all_terminal(client, ids)
        failed = [r for r in records if r["generation_status"] == "failed"]
        assert failed, "a job claimed before the crash must not be retried past max_job_claims"
        assert len(failed) == len(ids)
        for record in failed:
            assert record["generation_error_name"] == "bse_internal_error", record
            assert "interrupted" in str(record["generation_error"])
        billing = client.get("/user/billing").json()["data"]
    _assert_money_consistent(server.data_dir)
    assert billing["billing_credit_balance"] == pytest.approx(10.0)
