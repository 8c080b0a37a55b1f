"""A generation's stored files are exactly those on its record.

Cancel, failure and a re-claimed attempt remove the rest as they happen; the worker's
periodic sweep removes what a crash left behind.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from genplane.clock import utcnow
from genplane.db.models import Generation
from genplane.generations.orphan_files import Attempt, drop_unrecorded
from genplane.storage.store import StorageError, StoredFile

from .conftest import Caller, Harness

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def files_of(h: Harness, gid: str) -> set[str]:
    """The keys stored under a generation, as they are on disk."""
    root: Path = h.services.settings.files_dir
    while True:
        try:
            return {p.relative_to(root).as_posix() for p in (root / gid).rglob("*") if p.is_file()}
        except FileNotFoundError:  # a folder pruned while it was walked: look again
            continue


async def status_of(h: Harness, gid: str) -> str:
    async with h.services.db.read() as s:
        gen = await s.get(Generation, gid, populate_existing=True)
        assert gen is not None
        return gen.status


async def create(caller: Caller, outputs: int = 1) -> str:
    r = await caller.create_image({"generation_prompt": "fox", "generation_output_number": outputs})
    assert r.status_code == 200, r.text
    gid: str = r.json()["data"]["generation_id"]
    return gid


async def set_row(h: Harness, gid: str, **values: Any) -> None:
    async with h.services.db.write() as s:
        await s.execute(update(Generation).where(Generation.id == gid).values(**values))


def url_path(f: StoredFile) -> str:
    return httpx.URL(f.url).path


# -- as it happens ---------------------------------------------------------------------------------


async def test_cancel_while_storing_removes_the_stored_files(
    harness: Harness, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = harness.services.store
    original = store.put
    written: list[StoredFile] = []
    landed = asyncio.Event()

    async def put_then_hang(gid: str, index: int, ext: str, data: bytes, content_type: str) -> StoredFile:
        stored = await original(gid, index, ext, data, content_type)
        written.append(stored)
        landed.set()
        await asyncio.Event().wait()  # the job is stuck between storing and finishing
        return stored

    monkeypatch.setattr(store, "put", put_then_hang)
    gid = await create(caller, outputs=2)
    await asyncio.wait_for(landed.wait(), 10)
    assert files_of(harness, gid) == {written[0].key}
    assert (await caller.client.get(url_path(written[0]))).status_code == 200

    r = await caller.post(f"/v1/content/generation/cancel/{gid}")
    assert r.status_code == 200, r.text

    async def gone() -> bool:
        return not files_of(harness, gid)

    await wait_until(gone, "the canceled generation's files to be removed")
    assert (await caller.client.get(url_path(written[0]))).status_code == 404
    assert (await caller.get(f"/v1/content/{gid}")).json()["data"]["generation_status"] == "canceled"


async def test_a_failure_after_storing_some_outputs_removes_them(
    harness: Harness, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = harness.services.store
    original = store.put
    written: list[StoredFile] = []

    async def second_fails(gid: str, index: int, ext: str, data: bytes, content_type: str) -> StoredFile:
        if index == 1:
            raise StorageError("the disk is full")
        stored = await original(gid, index, ext, data, content_type)
        written.append(stored)
        return stored

    monkeypatch.setattr(store, "put", second_fails)
    gid = await create(caller, outputs=2)
    record = await caller.wait(gid)
    assert record["generation_status"] == "failed"
    assert record["generation_error_name"] == "bse_storage_error"
    assert len(written) == 1

    async def gone() -> bool:
        return not files_of(harness, gid)

    await wait_until(gone, "the failed generation's files to be removed")
    assert (await caller.client.get(url_path(written[0]))).status_code == 404


async def test_a_reclaimed_attempt_removes_the_earlier_attempts_files(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(run_worker=False)
    caller = await h.caller()
    gid = await create(caller)
    # An earlier attempt stored its output and died before finishing: its lease lapsed.
    earlier = await h.services.store.put(gid, 0, "png", PNG, "image/png")
    await set_row(
        h,
        gid,
        status="processing",
        claims=1,
        started_at=utcnow(),
        lease_owner="dead-host:1:abcdef01",
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    worker = h.services.worker
    await worker.start()
    try:
        record = await caller.wait(gid)
    finally:
        await worker.stop()
    assert record["generation_status"] == "succeeded"
    recorded = {httpx.URL(u).path.removeprefix("/files/") for u in record["generation_output_file"]}
    assert earlier.key not in recorded
    assert files_of(h, gid) == recorded
    assert (await caller.client.get(url_path(earlier))).status_code == 404
    for url in record["generation_output_file"]:
        assert (await caller.client.get(url)).status_code == 200


async def test_an_attempt_taken_over_removes_its_own_files_while_the_new_owner_runs(
    harness: Harness, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker re-claimed the job (this one's lease lapsed) while this one stored its
    outputs: its finish loses, and what it stored goes at once, though the job is still running
    under the other worker's lease (which a record-based clean-up has to leave alone)."""
    store = harness.services.store
    original = store.put
    written: list[StoredFile] = []

    async def taken_over_while_storing(
        gid: str, index: int, ext: str, data: bytes, content_type: str
    ) -> StoredFile:
        stored = await original(gid, index, ext, data, content_type)
        written.append(stored)
        if index == 1:
            await set_row(
                harness, gid, lease_owner="other-host:1:abcdef01",
                lease_expires_at=utcnow() + timedelta(seconds=60), claims=2,
            )
        return stored

    monkeypatch.setattr(store, "put", taken_over_while_storing)
    gid = await create(caller, outputs=2)

    async def both_stored_and_gone() -> bool:
        return len(written) == 2 and not files_of(harness, gid)

    await wait_until(both_stored_and_gone, "the taken-over attempt's files to be removed")
    async with harness.services.db.read() as s:
        gen = await s.get(Generation, gid, populate_existing=True)
        assert gen is not None
        assert (gen.status, gen.lease_owner, gen.output_files) == (
            "processing", "other-host:1:abcdef01", None
        )


async def test_a_clean_up_left_from_an_earlier_run_spares_the_same_workers_later_run(
    harness_factory: Callable[..., Any],
) -> None:
    """A worker that lost a job's lease can claim it again; the first run's clean-up, still
    going (or delayed on the database), must not take the second run's files, which its
    ending is about to record. A run is its owner and its claim, not the owner alone."""
    h: Harness = await harness_factory(run_worker=False)
    caller = await h.caller()
    gid = await create(caller)
    owner = h.services.worker.owner
    await set_row(h, gid, status="processing", claims=2, started_at=utcnow(), lease_owner=owner,
                  lease_expires_at=utcnow() + timedelta(seconds=60))
    second_run = await h.services.store.put(gid, 0, "png", PNG, "image/png")
    db, store = h.services.db, h.services.store

    assert await drop_unrecorded(db, store, gid, Attempt(owner, 1)) == 0  # the earlier run
    assert files_of(h, gid) == {second_run.key}
    assert await drop_unrecorded(db, store, gid, Attempt(owner, 2)) == 1  # the run itself
    assert files_of(h, gid) == set()


# -- what a crash leaves: the sweep -------------------------------------------------------------------


async def test_the_sweep_removes_files_no_record_lists(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(run_worker=False)
    caller = await h.caller()
    store = h.services.store

    failed = await create(caller)
    await set_row(h, failed, status="failed", error_code="bse_provider_error", error="x")
    failed_file = await store.put(failed, 0, "png", PNG, "image/png")

    canceled = await create(caller)
    assert (await caller.post(f"/v1/content/generation/cancel/{canceled}")).status_code == 200
    canceled_file = await store.put(canceled, 0, "png", PNG, "image/png")

    succeeded = await create(caller)
    kept = await store.put(succeeded, 0, "png", PNG, "image/png")
    extra = await store.put(succeeded, 0, "png", PNG, "image/png")
    await set_row(
        h,
        succeeded,
        status="succeeded",
        output_files=[{"url": kept.url, "key": kept.key, "size": kept.size, "content_type": "image/png"}],
    )

    # Running elsewhere (a live lease): its files are not the sweep's business yet.
    running = await create(caller)
    await set_row(
        h, running, status="processing", lease_owner="x", lease_expires_at=utcnow() + timedelta(hours=1)
    )
    in_progress = await store.put(running, 0, "png", PNG, "image/png")

    # Files of a generation whose record is gone.
    deleted = str(uuid.uuid4())
    deleted_file = await store.put(deleted, 0, "png", PNG, "image/png")

    orphans = [failed_file, canceled_file, extra, deleted_file]
    for f in [*orphans, kept, in_progress]:
        assert (await caller.client.get(url_path(f))).status_code == 200

    await h.services.worker.sweep()

    for f in orphans:
        assert (await caller.client.get(url_path(f))).status_code == 404, f.key
    assert files_of(h, failed) == files_of(h, canceled) == files_of(h, deleted) == set()
    assert files_of(h, succeeded) == {kept.key}
    assert files_of(h, running) == {in_progress.key}
    assert (await caller.client.get(url_path(kept))).status_code == 200
    assert (await caller.client.get(url_path(in_progress))).status_code == 200
    assert not (h.services.settings.files_dir / deleted).exists()
    assert await status_of(h, succeeded) == "succeeded"


async def test_the_sweep_works_in_bounded_batches(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(run_worker=False)
    store = h.services.store
    worker = h.services.worker
    worker.file_sweep.batch = 2
    gids = [str(uuid.uuid4()) for _ in range(5)]
    for gid in gids:
        await store.put(gid, 0, "png", PNG, "image/png")

    def left() -> int:
        return sum(1 for gid in gids if files_of(h, gid))

    assert left() == 5
    await worker.sweep()
    assert left() == 3
    await worker.sweep()
    assert left() == 1
    await worker.sweep()
    assert left() == 0


async def test_the_running_worker_sweeps_on_its_schedule(harness: Harness, caller: Caller) -> None:
    gid = await create(caller)
    assert (await caller.wait(gid))["generation_status"] == "succeeded"
    await set_row(harness, gid, status="failed", output_files=None)  # a crash, as far as files go
    left = files_of(harness, gid)
    assert left

    async def gone() -> bool:
        return not files_of(harness, gid)

    await wait_until(gone, "the sweep to remove the failed generation's files")
