"""Stored files that no record lists: removed as jobs end, and by a periodic sweep.

The rule: a generation's stored files are exactly those on its record
(``output_files``, served as ``generation_output_file``). Anything else under its
prefix is an orphan that would still answer 200 at its URL: the outputs of a job
canceled or failed after it stored some, of an attempt killed between storing and
finishing, or of an earlier attempt of a job that was claimed again. The worker
removes them when a job ends or is re-claimed (:func:`drop_unrecorded`); the sweep
(:class:`FileSweep`) catches what a crash left, a bounded batch of generations per
tick, walking the store's generation folders in order and starting over at the end.

A generation still running in another run (another worker's lease, or a later claim by
the same worker) is left alone: its files are not on the record *yet*, and that run (or
whoever re-claims the job) cleans up when it ends. An attempt's own files, which it knows
by key, it deletes itself whoever holds the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy import select

from genplane.contract.status import GenerationStatus
from genplane.db.engine import Database
from genplane.db.models import Generation
from genplane.generations.lifecycle import ACTIVE
from genplane.storage.store import FileStore, StorageError

log = structlog.get_logger("genplane.orphan_files")

SWEEP_BATCH = 200  # generation folders looked at per sweep tick


@dataclass(frozen=True)
class Attempt:
    """One run of a job: the worker holding the lease and the claim that started the run.

    The owner alone does not name a run: a worker can claim the same job again after losing
    its lease, and a clean-up left over from the earlier run must not take the later run's
    files (which its ending is about to record) for orphans."""

    owner: str
    claims: int


def files_to_keep(gen: Generation | None, attempt: Attempt | None = None) -> list[str] | None:
    """The keys a generation may keep; None when its files are not ours to judge.

    ``attempt`` is the run asking: while it holds the job, the job has no files to keep yet
    (a previous attempt's, or its own unfinished ones, are all orphans).
    """
    if gen is None:
        return []  # the record is gone: so are its files
    if gen.status in ACTIVE:
        current = attempt is not None and (gen.lease_owner, gen.claims) == (attempt.owner, attempt.claims)
        return [] if current else None
    if gen.status != GenerationStatus.SUCCEEDED:
        return []
    return [str(f["key"]) for f in gen.output_files or [] if isinstance(f, dict) and f.get("key")]


async def _delete_except(store: FileStore, generation_id: str, keep: Sequence[str]) -> int:
    try:
        removed = await store.delete_except(generation_id, keep)
    except StorageError as exc:  # the next sweep tries again
        log.warning(
            "orphan_files_not_deleted", generation_id=generation_id, error=exc.summary, detail=exc.detail
        )
        return 0
    if removed:
        log.info("orphan_files_deleted", generation_id=generation_id, files=removed)
    return removed


async def drop_unrecorded(
    db: Database, store: FileStore, generation_id: str, attempt: Attempt | None = None
) -> int:
    """Delete the generation's stored files its record does not list; returns how many."""
    async with db.read() as s:
        gen = await s.get(Generation, generation_id, populate_existing=True)
    keep = files_to_keep(gen, attempt)
    if keep is None:
        return 0
    return await _delete_except(store, generation_id, keep)


class FileSweep:
    """Walks the store's generation folders ``batch`` at a time, one batch per call."""

    def __init__(self, db: Database, store: FileStore, batch: int = SWEEP_BATCH) -> None:
        self.db = db
        self.store = store
        self.batch = batch
        self._after: str | None = None  # the last generation id looked at

    async def run(self) -> int:
        """One batch; returns how many files were deleted."""
        try:
            ids = await self.store.generation_ids(self._after, self.batch)
        except StorageError as exc:
            log.warning("orphan_sweep_failed", error=exc.summary, detail=exc.detail)
            return 0
        self._after = ids[-1] if len(ids) >= self.batch else None  # at the end: start over
        if not ids:
            return 0
        async with self.db.read() as s:
            rows = await s.scalars(select(Generation).where(Generation.id.in_(ids)))
            records = {gen.id: gen for gen in rows.all()}
        removed = 0
        for gid in ids:
            keep = files_to_keep(records.get(gid))
            if keep is not None:
                removed += await _delete_except(self.store, gid, keep)
        return removed
