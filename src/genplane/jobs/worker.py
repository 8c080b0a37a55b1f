"""The generation worker: claims jobs by lease, runs the provider chain, settles money.

The database row is the truth and the in-process queue only a hint: a job is run by
whoever claims its lease, a heartbeat keeps the lease while the job runs, and the
sweeper re-queues every active job whose lease has lapsed (a crashed worker, a
restart), so no generation stays ``processing`` forever. A job claimed more than
``max_job_claims`` times is failed and refunded rather than retried without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import structlog
from sqlalchemy import update

from genplane.catalog.loader import Catalog
from genplane.clock import as_utc, utcnow
from genplane.credits.ledger import settle
from genplane.db.engine import Database
from genplane.db.models import Generation
from genplane.errors import ERRORS
from genplane.generations import repository as repo
from genplane.ids import new_id
from genplane.providers.base import ProviderAdapter, ProviderError, ProviderJob, ProviderResult
from genplane.settings import Settings
from genplane.storage.store import FileStore, StorageError, StoredFile

log = structlog.get_logger("genplane.worker")


def _provider_error_entry(provider: str, error: str, message: str, retryable: bool) -> dict[str, Any]:
    spec = ERRORS[error]
    return {
        "provider": provider,
        "error": error,
        "code": spec.code,
        "type": spec.type,
        "message": message,
        "retryable": retryable,
    }


class _ChainFailed(Exception):
    def __init__(self, error: str, message: str, provider_errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.provider_errors = provider_errors


class Worker:
    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        providers: dict[str, ProviderAdapter],
        store: FileStore,
        settings: Settings,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.http = http or httpx.AsyncClient()
        self.db = db
        self.catalog = catalog
        self.providers = providers
        self.store = store
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._user_canceled: set[str] = set()
        self._background: list[asyncio.Task[None]] = []
        self.on_terminal: Callable[[str], Awaitable[None]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._background = [
            asyncio.create_task(self._consume()) for _ in range(self.settings.worker_concurrency)
        ]
        self._background.append(asyncio.create_task(self._sweep_forever()))

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*self._background, *running, return_exceptions=True)
        # Hand our jobs back at once instead of making the next process wait out the lease.
        async with self.db.write() as s:
            await s.execute(
                update(Generation)
                .where(Generation.lease_owner == self.owner, Generation.status.in_(repo.ACTIVE))
                .values(lease_owner=None, lease_expires_at=None)
            )

    def enqueue(self, generation_id: str) -> None:
        if generation_id in self._queued or generation_id in self._running:
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
        return len(ids)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep_failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)

    async def _consume(self) -> None:
        while True:
            gid = await self._queue.get()
            self._queued.discard(gid)
            task = asyncio.create_task(self._run(gid))
            self._running[gid] = task
            try:
                await asyncio.wait([task])
            finally:
                self._running.pop(gid, None)
                self._user_canceled.discard(gid)
            if not task.cancelled() and task.exception() is not None:
                log.error("job_crashed", generation_id=gid, error=repr(task.exception()))

    # -- one job -----------------------------------------------------------------------------
    async def _run(self, gid: str) -> None:
        async with self.db.write() as s:
            gen = await repo.claim(s, gid, self.owner, self.settings.lease_seconds)
        if gen is None:
            return
        if gen.claims > self.settings.max_job_claims:
            await self._fail(
                gen,
                "bse_internal_error",
                f"The job was abandoned after {gen.claims - 1} interrupted attempts.",
                None,
            )
            return
        me = asyncio.current_task()
        assert me is not None
        heartbeat = asyncio.create_task(self._heartbeat(gid, me))
        try:
            await self._execute(gen)
        except _ChainFailed as failed:
            await self._fail(gen, failed.error, failed.message, failed.provider_errors)
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, gid: str, job: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                async with self.db.write() as s:
                    alive = await repo.extend_lease(s, gid, self.owner, self.settings.lease_seconds)
            except Exception:
                log.exception("heartbeat_failed", generation_id=gid)
                continue
            if not alive:
                # Canceled through another process, or taken over: stop paying for it.
                self._user_canceled.add(gid)
                job.cancel()
                return

    def _job(self, gen: Generation, native_id: str) -> ProviderJob:
        return ProviderJob(
            generation_id=gen.id,
            model_identifier=gen.model_identifier,
            native_model_id=native_id,
            model_type=gen.model_type,
            prompt=gen.prompt,
            ratio=gen.ratio or "1:1",
            output_format=gen.output_format or "png",
            output_number=gen.output_number,
            input_file=gen.input_file,
            input_file_last_content=gen.input_file_last_content,
            duration=gen.duration,
            resolution=gen.resolution,
            generate_audio=gen.generate_audio,
            specific=dict(gen.specific or {}),
        )

    def _deadline(self, gen: Generation) -> float:
        if gen.model_type == "video":
            return self.settings.video_attempt_deadline_seconds
        return self.settings.image_attempt_deadline_seconds

    async def _execute(self, gen: Generation) -> None:
        model = self.catalog.models.get(gen.model_identifier)
        if model is None:
            raise _ChainFailed(
                "bse_model_not_configured", f"{gen.model_identifier} is no longer in the catalogue.", []
            )
        errors: list[dict[str, Any]] = []
        for provider_id in gen.provider_order:
            adapter = self.providers.get(provider_id)
            binding = model.providers.get(provider_id)
            if adapter is None or binding is None or not adapter.configured():
                errors.append(
                    _provider_error_entry(
                        provider_id,
                        "bse_provider_unavailable",
                        f"{provider_id} is not configured here.",
                        True,
                    )
                )
                continue
            job = self._job(gen, binding.model_id)
            started = utcnow()
            prediction_id: str | None = None
            try:
                async with asyncio.timeout(self._deadline(gen)):
                    prediction_id = await adapter.submit(job)
                    await self._note_prediction(gen.id, provider_id, prediction_id)
                    result = await adapter.wait(job, prediction_id)
            except ProviderError as exc:
                await self._attempt(gen, provider_id, "failed", started, exc.error, exc.message)
                errors.append(_provider_error_entry(provider_id, exc.error, exc.message, exc.retryable))
                if not exc.retryable:
                    raise _ChainFailed(exc.error, exc.message, errors) from exc
                continue
            except TimeoutError:
                if prediction_id:
                    await self._cancel_upstream(adapter, prediction_id)
                message = f"{provider_id} did not finish within {self._deadline(gen):.0f} s."
                await self._attempt(gen, provider_id, "failed", started, "bse_provider_timeout", message)
                errors.append(_provider_error_entry(provider_id, "bse_provider_timeout", message, True))
                continue
            except asyncio.CancelledError:
                if gen.id in self._user_canceled:
                    if prediction_id:
                        await asyncio.shield(self._cancel_upstream(adapter, prediction_id))
                    await asyncio.shield(self._attempt(gen, provider_id, "cancelled", started))
                raise
            await self._complete(gen, provider_id, prediction_id, started, result)
            return
        raise _ChainFailed("bse_all_providers_failed", "Every provider in the chain failed.", errors)

    async def _cancel_upstream(self, adapter: ProviderAdapter, prediction_id: str) -> None:
        try:
            await adapter.cancel(prediction_id)
        except Exception:
            log.warning("provider_cancel_failed", provider=adapter.provider_id, prediction_id=prediction_id)

    async def _note_prediction(self, gid: str, provider_id: str, prediction_id: str) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(Generation)
                .where(Generation.id == gid)
                .values(
                    provider_state={"provider": provider_id, "prediction_id": prediction_id},
                )
            )

    async def _attempt(
        self,
        gen: Generation,
        provider_id: str,
        outcome: str,
        started: Any,
        error: str | None = None,
        message: str | None = None,
    ) -> None:
        async with self.db.write() as s:
            repo.record_attempt(s, gen, provider_id, outcome, started, error, message)

    async def _store(self, gen: Generation, result: ProviderResult) -> list[StoredFile]:
        stored: list[StoredFile] = []
        for index, output in enumerate(result.outputs):
            if output.data is None:
                raise _ChainFailed("bse_provider_error", "The provider returned an output without data.", [])
            for attempt in range(3):
                try:
                    stored.append(
                        await self.store.put(gen.id, index, output.ext, output.data, output.content_type)
                    )
                    break
                except StorageError as exc:
                    if attempt == 2:
                        raise _ChainFailed(
                            "bse_storage_error", f"Storing an output failed: {exc}", []
                        ) from exc
                    await asyncio.sleep(0.2 * (attempt + 1))
        return stored

    async def _complete(
        self,
        gen: Generation,
        provider_id: str,
        prediction_id: str | None,
        started: Any,
        result: ProviderResult,
    ) -> None:
        stored = await self._store(gen, result)
        now = utcnow()
        async with self.db.write() as s:
            won = await repo.finish(
                s,
                gen.id,
                "succeeded",
                owner=self.owner,
                provider_used=provider_id,
                output_files=[
                    {"url": f.url, "key": f.key, "size": f.size, "content_type": f.content_type}
                    for f in stored
                ],
                metrics_total_time=round((now - as_utc(gen.created_at)).total_seconds(), 3),
                metrics_predict_time=result.predict_time,
            )
            if won:
                await settle(s, gen, "charge")
            repo.record_attempt(
                s,
                gen,
                provider_id,
                "used" if won else "discarded",
                started,
                cost_millis=gen.cost_millis if won else 0,
            )
        if not won:
            # Canceled (or taken over) while the provider worked: the files belong to nobody.
            with contextlib.suppress(StorageError):
                await self.store.delete_generation(gen.id)
            return
        await self._notify(gen.id)

    async def _fail(
        self, gen: Generation, error: str, message: str, provider_errors: list[dict[str, Any]] | None
    ) -> None:
        now = utcnow()
        async with self.db.write() as s:
            won = await repo.finish(
                s,
                gen.id,
                "failed",
                error=message,
                error_code=error,
                provider_errors=provider_errors or None,
                metrics_total_time=round((now - as_utc(gen.created_at)).total_seconds(), 3),
            )
            if won:
                await settle(s, gen, "refund")
        if won:
            log.info("generation_failed", generation_id=gen.id, error=error)
            await self._notify(gen.id)

    async def _notify(self, gid: str) -> None:
        if self.on_terminal is not None:
            await self.on_terminal(gid)
