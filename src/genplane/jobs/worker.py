"""The generation worker: claims jobs by lease, runs the provider chain, settles money.

The database row is the truth and the in-process queue only a hint: a job is run by
whoever claims its lease, one heartbeat per worker keeps the leases of every job it runs
(one UPDATE for all of them), and the
sweeper re-queues every active job whose lease has lapsed (a crashed worker, a
restart), so no generation stays ``processing`` forever. A job claimed more than
``max_job_claims`` times is failed and refunded rather than retried without end.
Stored files follow the record: whatever a job stored that its record does not list
(canceled, failed, re-claimed) is deleted, here as jobs end and by the sweep after a
crash (:mod:`genplane.generations.orphan_files`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from genplane.catalog.loader import Catalog
from genplane.catalog.pricing import delivered_cost_millis
from genplane.contract.errors import ErrorName
from genplane.contract.status import AttemptOutcome
from genplane.db.engine import Database
from genplane.db.models import Generation
from genplane.generations import lifecycle
from genplane.generations import repository as repo
from genplane.generations.orphan_files import Attempt, FileSweep, drop_unrecorded
from genplane.generations.waiters import GenerationWaiters, LocalGenerationWaiters
from genplane.ids import new_id
from genplane.jobs.chain import ChainFailed, ChainSuccess, ProviderChain
from genplane.jobs.fetch import FileFetcher
from genplane.jobs.janitor import Janitor
from genplane.metrics import domain as metrics
from genplane.providers.base import ProviderAdapter, ProviderOutput
from genplane.settings import Settings
from genplane.storage.store import FileStore, StorageError, StoredFile

log = structlog.get_logger("genplane.worker")

#: What a tenant is told when a job failed on something genplane did not foresee.
UNEXPECTED_FAILURE = "The generation failed because of an internal error."

#: Tries at storing one output before the generation fails with bse_storage_error.
STORE_ATTEMPTS = 3

#: Jobs one process runs at once when ``worker_concurrency`` is unset: at least and at most.
#: The floor is the provider HTTP client's connection limit (providers.registry): beyond it,
#: synchronous provider calls would queue in httpx's pool, their attempt deadline running,
#: for no more images per second (bench/image_cpu.py --latency 2: 158/s at 512 and at
#: 2,000). A job waiting on a provider holds 25-80 KiB: about 30 MiB at the floor, and at
#: most about 400 to 1,000 MiB at the ceiling (bench/inflight.py: 10,000 jobs in 370 MiB).
DEFAULT_CONCURRENCY_FLOOR = 512
CONCURRENCY_CEILING = 16384


def concurrency(settings: Settings) -> int:
    """Jobs one process runs at once: ``worker_concurrency``, or what the in-flight caps admit.

    The in-flight cap (per account, per plan) is what bounds the work a tenant may have
    going, and a job waiting on a provider costs little but memory: a lower limit here would
    only queue admitted jobs behind each other (16 of them cap a 2 s provider at 8 images/s).
    """
    if settings.worker_concurrency is not None:
        return settings.worker_concurrency
    caps = [settings.max_inflight_generations, *settings.max_inflight_generations_by_plan.values()]
    return min(CONCURRENCY_CEILING, max(DEFAULT_CONCURRENCY_FLOOR, *caps))


class Worker:
    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        providers: dict[str, ProviderAdapter],
        store: FileStore,
        settings: Settings,
        fetcher: FileFetcher,
    ) -> None:
        self.chain = ProviderChain(catalog, providers, fetcher, settings)
        self.db = db
        self.catalog = catalog
        self.providers = providers
        self.store = store
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        #: Jobs whose claim committed and whose ending has not begun: what the heartbeat keeps.
        self._leased: set[str] = set()
        self._user_canceled: set[str] = set()
        self._background: list[asyncio.Task[None]] = []
        #: Whether this process runs jobs; an API-only process (run_worker=false) must not
        #: queue hints nobody consumes: the job's row is the work, for whichever worker.
        self._started = False
        self.file_sweep = FileSweep(db, store)
        self.janitor = Janitor(db, settings)
        #: Claims in progress at once: a burst of thousands of queued jobs would otherwise all
        #: wait for a pooled connection together, each claimed job's lease running while the
        #: rest of its work queues behind the others' claims (past the pool's 60 s timeout on
        #: a starved loop). Unclaimed jobs wait here instead, holding no lease.
        self._claiming = asyncio.Semaphore(max(1, settings.database_pool_size // 2))
        self.waiters: GenerationWaiters = LocalGenerationWaiters()  # woken after terminal commits

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._started = True
        slots = asyncio.Semaphore(concurrency(self.settings))
        self._background = [
            asyncio.create_task(self._consume(slots)),
            asyncio.create_task(self._sweep_forever()),
            asyncio.create_task(self._heartbeat_forever()),
        ]

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop taking jobs; let running ones finish for up to ``drain_seconds``; stop the rest
        and hand their leases back at once, so another worker resumes them without waiting
        out the lease."""
        self._started = False
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if drain_seconds > 0 and self._running:
            await asyncio.wait(list(self._running.values()), timeout=drain_seconds)
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        async with self.db.write() as s:
            await lifecycle.release_leases(s, self.owner)

    def enqueue(self, generation_id: str) -> None:
        if not self._started or generation_id in self._queued or generation_id in self._running:
            return
        self._queued.add(generation_id)
        self._queue.put_nowait(generation_id)

    def cancel_local(self, generation_id: str) -> bool:
        """Stop a job this process is running (the caller already moved it to canceled)."""
        task = self._running.get(generation_id)
        if task is None:
            return False
        self._user_canceled.add(generation_id)
        task.cancel()
        return True

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def sweep(self) -> int:
        async with self.db.read() as s:
            ids = await repo.due_for_work(s)
        for gid in ids:
            self.enqueue(gid)
        await self.file_sweep.run()  # stored files no record lists, a batch per tick
        await self.janitor.run_if_due()  # history past its retention, every janitor interval
        return len(ids)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep_failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)

    async def _consume(self, slots: asyncio.Semaphore) -> None:
        """Start queued jobs, each as its own task, while fewer than the concurrency run: a
        free slot costs nothing, so the concurrency can be as high as the in-flight caps."""
        while True:
            await slots.acquire()
            try:
                gid = await self._queue.get()
            except BaseException:
                slots.release()
                raise
            self._queued.discard(gid)
            task = asyncio.create_task(self._run(gid))
            self._running[gid] = task
            task.add_done_callback(functools.partial(self._ended, gid, slots))

    def _ended(self, gid: str, slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
        self._running.pop(gid, None)
        self._user_canceled.discard(gid)
        slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("job_crashed", generation_id=gid, error=repr(task.exception()))

    # -- one job -----------------------------------------------------------------------------
    async def _run(self, gid: str) -> None:
        async with self._claiming, self.db.write() as s:
            gen = await lifecycle.claim(s, gid, self.owner, self.settings.lease_seconds)
        if gen is None:
            return
        self._leased.add(gid)
        try:
            await self._run_claimed(gen)
        finally:
            self._leased.discard(gid)

    async def _run_claimed(self, gen: Generation) -> None:
        gid = gen.id
        if gen.claims > self.settings.max_job_claims:
            await self._fail(
                gen,
                "bse_internal_error",
                f"The job was abandoned after {gen.claims - 1} interrupted attempts.",
                None,
            )
            return
        if gen.claims > 1:
            # Claimed again after a lapsed lease: what the earlier attempt stored is no one's.
            await self._drop_files(gen)
        try:
            await self._execute(gen)
        except ChainFailed as failed:
            await self._fail(gen, failed.error, failed.message, failed.provider_errors)
        except asyncio.CancelledError:
            # Canceled, taken over or shut down, maybe between storing and finishing.
            await asyncio.shield(self._drop_files(gen))
            raise
        except (OperationalError, PoolTimeout):
            # The database, not the job, is at fault (locked, connection lost, no connection
            # free in time): let the lease lapse so the sweeper runs the job again once the
            # database is back; the next claim removes what this attempt stored.
            raise
        except Exception:
            # A bug hit by this job would hit it again on every re-claim, holding the
            # tenant's credits until the claim limit: fail it now. The exception's text
            # is for the log only; it can hold paths and library internals.
            log.exception("job_failed_unexpectedly", generation_id=gid)
            await self._fail(gen, "bse_internal_error", UNEXPECTED_FAILURE, None)

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                await self.heartbeat()
            except Exception:
                log.exception("heartbeat_failed")

    async def heartbeat(self) -> None:
        """Renew every lease this worker holds with one statement, and stop the jobs whose
        lease is gone (canceled through another process, or taken over): one write per worker
        per beat, where one per job cost 10,000 writes a beat at 10,000 jobs in flight."""
        if not self._leased:
            return
        held = set(self._leased)
        async with self.db.lease_write() as s:
            renewed = await lifecycle.extend_leases(s, self.owner, self.settings.lease_seconds)
        # A job that began ending since ``held`` was taken left ``_leased`` first: not stopped.
        lost = (held - renewed) & self._leased
        for gid in lost:
            # Stopped once: a second cancel would cut its clean-up short and leave that running on
            # after the task ends.
            self._leased.discard(gid)
            task = self._running.get(gid)
            if task is not None:
                self._user_canceled.add(gid)
                task.cancel()
        if lost:
            log.warning("leases_lost", jobs=len(lost), renewed=len(renewed))

    async def _execute(self, gen: Generation) -> None:
        async def record(
            provider: str, outcome: str, started: datetime, error: str | None, message: str | None
        ) -> None:
            await self._attempt(gen, provider, outcome, started, error, message)

        async def note(provider: str, prediction_id: str) -> None:
            await self._note_prediction(gen.id, provider, prediction_id)

        success = await self.chain.run(
            gen,
            record_attempt=record,
            note_prediction=note,
            user_canceled=lambda: gen.id in self._user_canceled,
        )
        await self._complete(gen, success)

    async def _note_prediction(self, gid: str, provider_id: str, prediction_id: str) -> None:
        async with self.db.write() as s:
            await lifecycle.note_prediction(s, gid, provider_id, prediction_id)

    async def _attempt(
        self,
        gen: Generation,
        provider_id: str,
        outcome: str,
        started: Any,
        error: str | None = None,
        message: str | None = None,
    ) -> None:
        # A canceled prediction ran upstream for a while: count it as wasted spend.
        cost = gen.cost_millis if outcome == AttemptOutcome.CANCELED else 0
        metrics.provider_attempt_ended(provider_id, outcome, started)
        async with self.db.write() as s:
            await repo.record_attempt(s, gen, provider_id, outcome, started, error, message, cost_millis=cost)

    async def _store(self, gen: Generation, outputs: list[ProviderOutput]) -> list[StoredFile]:
        """Store every output, or none: an attempt interrupted midway (canceled, taken over,
        storage down) removes what it had stored, which no record lists."""
        stored: list[StoredFile] = []
        try:
            for index, output in enumerate(outputs):
                stored.append(await self._store_one(gen, index, output))
        except BaseException:
            await asyncio.shield(self._delete_own(gen.id, stored))
            raise
        return stored

    async def _store_one(self, gen: Generation, index: int, output: ProviderOutput) -> StoredFile:
        assert output.data is not None  # the chain downloaded every URL output
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.store.put(gen.id, index, output.ext, output.data, output.content_type)
            except StorageError as exc:
                # The detail names local paths: the log gets it, the tenant a stable message.
                log.warning(
                    "output_store_failed",
                    generation_id=gen.id,
                    attempt=attempt,
                    error=exc.summary,
                    detail=exc.detail,
                )
                if attempt == STORE_ATTEMPTS:
                    raise ChainFailed("bse_storage_error", "Storing an output failed.", []) from exc
                await asyncio.sleep(0.2 * attempt)

    async def _delete_own(self, gid: str, stored: list[StoredFile]) -> None:
        """Delete this attempt's own files, which no record lists: exactly those, so it works
        whoever holds the job now (a record-based clean-up must leave a job running under
        another worker's lease alone)."""
        if not stored:
            return
        try:
            await self.store.delete_files([f.key for f in stored])
        except Exception:  # the sweep removes them later
            log.exception("orphan_files_not_deleted", generation_id=gid)

    async def _complete(self, gen: Generation, success: ChainSuccess) -> None:
        provider_id = success.provider
        stored = await self._store(gen, success.outputs)
        self._leased.discard(gen.id)  # ending now: a heartbeat that misses it must not stop it
        async with self.db.write() as s:
            won = await lifecycle.succeed(
                s,
                gen,
                self.owner,
                provider_id,
                [{"url": f.url, "key": f.key, "size": f.size, "content_type": f.content_type}
                 for f in stored],
                success.predict_time,
                charge_millis=self._charge(gen, len(stored)),
            )
            await repo.record_attempt(
                s,
                gen,
                provider_id,
                AttemptOutcome.USED if won else AttemptOutcome.DISCARDED,
                success.started_at,
                cost_millis=gen.cost_millis,  # paid upstream either way; wasted when discarded
            )
        metrics.provider_attempt_ended(
            provider_id, AttemptOutcome.USED if won else AttemptOutcome.DISCARDED, success.started_at
        )
        await self.waiters.notify(gen.id)
        if not won:
            # Canceled (or taken over) while the provider worked: this attempt's files belong
            # to nobody, even while another worker still runs the job.
            await self._delete_own(gen.id, stored)
            return
        if gen.claims > 1:  # an earlier attempt may still have been storing when re-claimed
            await self._drop_files(gen)

    def _charge(self, gen: Generation, outputs: int) -> int:
        """What the generation pays for ``outputs`` delivered outputs: its reservation, or the
        delivered share when the provider returned fewer than asked (the rest is refunded).

        The chain ran the generation's model, so the catalogue has it; the share is priced
        as the reservation was, by the generation's own options."""
        return delivered_cost_millis(
            self.catalog.models[gen.model_identifier],
            gen.cost_millis,
            asked=gen.output_number,
            delivered=outputs,
            duration=gen.duration,
            resolution=gen.resolution,
            audio=bool(gen.generate_audio),
        )

    async def _drop_files(self, gen: Generation) -> None:
        """Delete the generation's stored files that its record does not list, as this run of
        the job (``gen`` as its claim left it) sees them."""
        try:
            await drop_unrecorded(self.db, self.store, gen.id, Attempt(self.owner, gen.claims))
        except Exception:  # the sweep tries again later
            log.exception("orphan_files_check_failed", generation_id=gen.id)

    async def _fail(
        self, gen: Generation, error: ErrorName, message: str, provider_errors: list[dict[str, Any]] | None
    ) -> None:
        self._leased.discard(gen.id)  # ending now: a heartbeat that misses it must not stop it
        async with self.db.write() as s:
            won = await lifecycle.fail(s, gen, error, message, provider_errors)
        await self.waiters.notify(gen.id)
        if won:
            log.info("generation_failed", generation_id=gen.id, error=error)
        await self._drop_files(gen)  # outputs stored before the failure are not on the record
