"""Moving an embedded install to PostgreSQL with ``genplane db migrate-from-sqlite``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from genplane.db.models import LedgerEntry
from tests.conftest import Caller, Harness
from tests.serve_process import BIN


def run_cli(data_dir: Any, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENPLANE_")}
    env.update(GENPLANE_DATA_DIR=str(data_dir), GENPLANE_DATABASE_URL=database_url)
    return subprocess.run(
        [str(BIN / "genplane"), "db", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_an_embedded_install_moves_to_postgresql_with_its_keys_money_and_history(
    database_url: str, harness_factory: Callable[..., Any]  # the database outlives the apps
) -> None:
    embedded: Harness = await harness_factory()
    caller = await embedded.caller(credits="3")
    created = [(await caller.create_image()).json()["data"]["generation_id"] for _ in range(3)]
    done = [await caller.wait(gid) for gid in created]
    before = (await caller.get("/v1/user/billing")).json()["data"]
    data_dir = embedded.services.settings.data_dir

    moved = run_cli(data_dir, database_url, "migrate-from-sqlite", str(data_dir / "genplane.db"))
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "generations: 3 rows" in moved.stdout

    scaled: Harness = await harness_factory(database_url=database_url)  # same data dir: same secret key
    there = Caller(scaled.client, caller.account_id, caller.key, caller.key_id)
    assert (await there.get("/v1/user/billing")).json()["data"] == before
    for record in done:
        again = (await there.get(f"/v1/content/{record['generation_id']}")).json()["data"]
        assert again == record
    async with scaled.services.db.read() as s:
        entries = await s.scalar(select(func.count()).select_from(LedgerEntry))
    assert entries == 1 + 2 * 3  # the initial credits, and a reserve and a charge per generation
    # New rows after the copied ones: the ledger's id sequence continues past the copied ids.
    fresh = await there.wait((await there.create_image()).json()["data"]["generation_id"])
    assert fresh["generation_status"] == "succeeded"

    again = run_cli(data_dir, database_url, "migrate-from-sqlite", str(data_dir / "genplane.db"))
    assert again.returncode == 1
    assert "already has accounts" in again.stdout


def test_migrating_needs_a_postgresql_target(tmp_path: Any) -> None:
    source = tmp_path / "genplane.db"
    source.write_bytes(b"")
    refused = run_cli(tmp_path, "", "migrate-from-sqlite", str(source))
    assert refused.returncode == 1
    assert "GENPLANE_DATABASE_URL" in refused.stdout
