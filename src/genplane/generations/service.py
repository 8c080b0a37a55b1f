"""Generation rules: create (validate, price, reserve, record, dispatch), read, cancel, delete."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, bindparam, select

from genplane.accounts.service import AuthContext
from genplane.catalog.costs import CostRequest
from genplane.catalog.loader import Catalog
from genplane.catalog.pricing import binding_refusal, generation_cost_millis
from genplane.clock import utcnow
from genplane.contract.envelope import dumps, success_body
from genplane.contract.errors import ApiError
from genplane.contract.status import TERMINAL_STATUSES, GenerationStatus
from genplane.db.engine import Database
from genplane.db.models import Account, Generation
from genplane.generations import idempotency, lifecycle
from genplane.generations.orphan_files import drop_unrecorded
from genplane.generations.queue import JobQueue
from genplane.generations.record import to_record
from genplane.generations.request import GenerationRequest, check_generation
from genplane.generations.routing import ProviderRanker
from genplane.generations.waiters import GenerationWaiters, LocalGenerationWaiters
from genplane.net.fetch import PinnedFetcher
from genplane.providers.base import ProviderAdapter
from genplane.settings import Settings
from genplane.storage.store import FileStore


@dataclass(frozen=True)
class CreateResult:
    status_code: int
    body: bytes
    replayed: bool


#: A poll's one statement, built once: the column set of the record, by primary key.
_BY_ID = select(Generation.__table__).where(Generation.__table__.c.id == bindparam("id"))


class GenerationService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        catalog: Catalog,
        jobs: JobQueue,
        store: FileStore,
        providers: dict[str, ProviderAdapter],
        ranker: ProviderRanker,
        fetcher: PinnedFetcher,
    ) -> None:
        self.ranker = ranker
        self.fetcher = fetcher
        self.db = db
        self.settings = settings
        self.catalog = catalog
        self.jobs = jobs
        self.store = store
        self.providers = providers
        self.waiters: GenerationWaiters = LocalGenerationWaiters()  # shared with the worker by the app

    async def create(
        self,
        auth: AuthContext,
        media: str,
        model_identifier: str,
        raw: bytes,
        *,
        path: str,
        idempotency_key: str | None,
        request_id: str,
    ) -> CreateResult:
        # A replay depends on nothing but the stored answer: looked up before any check, so a
        # provider unconfigured or a price changed since does not change what the retry gets.
        if idempotency_key is not None:
            replay = await idempotency.begin(
                self.db,
                self.settings,
                auth.account_id,
                idempotency_key,
                idempotency.request_fingerprint("POST", path, raw),
            )
            if replay is not None:
                return CreateResult(replay.status_code, replay.body, True)
        try:
            gen, body = await self._admit(auth, media, model_identifier, raw, idempotency_key, request_id)
        except BaseException:
            if idempotency_key is not None:
                await idempotency.release(self.db, auth.account_id, idempotency_key)
            raise
        self.jobs.enqueue(gen.id)
        return CreateResult(200, body, False)

    async def _admit(
        self,
        auth: AuthContext,
        media: str,
        model_identifier: str,
        raw: bytes,
        idempotency_key: str | None,
        request_id: str,
    ) -> tuple[Generation, bytes]:
        """Check, route and price the request; record it, its reservation and its stored answer."""
        req = check_generation(self.catalog, media, model_identifier, raw)
        cost = generation_cost_millis(
            req.model,
            outputs=req.output_number,
            duration=req.duration,
            resolution=req.resolution,
            audio=bool(req.generate_audio),
        )
        provider_order = await self.route(req, cost)
        urls = [("generation_input_file", url) for url in req.input_file or []]
        if req.input_file_last_content:
            urls.append(("generation_input_file_last_content", req.input_file_last_content))
        for field, url in urls:  # also refused later, at fetch time, after redirects
            await self.fetcher.check_public(url, field)
        gen = lifecycle.new_generation(auth.account_id, req, provider_order, cost)
        data = {
            "model_identifier": gen.model_identifier,
            "generation_provider_order": gen.provider_order,
            "generation_prediction_id": gen.prediction_id,
            "generation_id": gen.id,
            "generation_initialized": True,
        }
        body = dumps(success_body(request_id, data, "Generation initialized"))
        async with self.db.write() as s:
            if idempotency_key is not None:  # before the admission, which locks the account row
                await idempotency.complete(s, auth.account_id, idempotency_key, 200, body)
            await lifecycle.admit(s, gen, self.settings.max_inflight_for(auth.plan))
        return gen, body

    async def route(self, req: GenerationRequest, reserved_millis: int) -> list[str]:
        """The chain a new generation will try: explicit as sent, or ranked for ``fastest``.

        Either way without the bindings routing must not use for this request (past their
        ``retire_after``, or billing more than ``reserved_millis``): see ``binding_refusal``.
        """

        def usable(p: str) -> bool:
            adapter = self.providers.get(p)
            return adapter is not None and adapter.configured()

        request = CostRequest(
            ratio=req.ratio,
            outputs=req.output_number,
            duration=req.duration,
            resolution=req.resolution,
            audio=bool(req.generate_audio),
            inputs=len(req.input_file or []),
        )
        today = utcnow().date()
        refused = {
            p: why
            for p in req.provider_order
            if (why := binding_refusal(req.model, p, request, reserved_millis, today)) is not None
        }
        candidates = [p for p in req.provider_order if p not in refused]
        if req.provider_order_explicit:
            chain = candidates
        else:
            chain = await self.ranker.rank(req.model, [p for p in candidates if usable(p)])
        if refused and not chain:
            raise ApiError(
                "bse_provider_unavailable",
                f"No provider can serve this {req.model.model_identifier} request here: "
                + " ".join(refused.values()),
                details={"providers": list(req.model.providers)},
            )
        if not any(usable(p) for p in chain):
            raise ApiError(
                "bse_provider_unavailable",
                f"No configured provider serves {req.model.model_identifier} here "
                f"(it is served by {', '.join(req.model.providers)}).",
                details={"providers": list(req.model.providers)},
            )
        return chain

    async def _owned(self, account_id: str, generation_id: str) -> Row[Any]:
        """The account's generation as stored, in one statement; another account's is not found."""
        rows = await self.db.fetch(_BY_ID, {"id": generation_id})
        if not rows or rows[0].account_id != account_id:
            raise ApiError("bse_generation_not_found", details={"generation_id": generation_id})
        return rows[0]

    async def get(self, account_id: str, generation_id: str) -> dict[str, Any]:
        return to_record(await self._owned(account_id, generation_id))

    async def wait(self, account_id: str, generation_id: str, seconds: float) -> dict[str, Any]:
        """The record once terminal, or as it is after ``seconds``: ``get`` that may wait.

        No session is held while waiting. The row is the truth: it is read again right after
        subscribing (the job may have ended since the first read), after each notification,
        and every ``prefer_wait_recheck_seconds`` (a transition committed by another process
        notifies no one here).
        """
        record = await self.get(account_id, generation_id)
        if record["generation_status"] in TERMINAL_STATUSES or seconds <= 0:
            return record
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        recheck = self.settings.prefer_wait_recheck_seconds
        async with self.waiters.subscribe(generation_id) as subscription:
            record = await self.get(account_id, generation_id)
            while record["generation_status"] not in TERMINAL_STATUSES:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await subscription.wait(min(remaining, recheck))
                record = await self.get(account_id, generation_id)
        return record

    async def list(self, account_id: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """A page, newest first, and the account's total from its counter (never a count).

        The page is a range of ``ix_generations_account_created_id`` (account, created_at,
        id): the first page reads ``limit`` index entries and their rows. A deep page still
        walks ``offset`` entries (OFFSET is linear), so past the first pages it picks the
        ids off the index alone and reads only the page's rows from the table.
        """
        newest_first = (Generation.created_at.desc(), Generation.id.desc())
        mine = Generation.account_id == account_id
        if offset < 1000:
            page = select(Generation).where(mine).order_by(*newest_first).limit(limit).offset(offset)
        else:
            ids = select(Generation.id).where(mine).order_by(*newest_first).limit(limit).offset(offset)
            page = select(Generation).where(Generation.id.in_(ids.scalar_subquery())).order_by(*newest_first)
        async with self.db.read() as s:
            total = await s.scalar(select(Account.generations_total).where(Account.id == account_id))
            rows = (await s.scalars(page)).all()
        return [to_record(g) for g in rows], int(total or 0)

    async def cancel(self, account_id: str, generation_id: str) -> dict[str, Any]:
        async with self.db.write() as s:
            gen, refunded = await lifecycle.cancel(s, account_id, generation_id)
        await self.waiters.notify(gen.id)
        sent = await self._cancel_upstream(gen)
        # A job stopped between storing and finishing leaves outputs no canceled record lists.
        await drop_unrecorded(self.db, self.store, gen.id)
        return {
            "generation_id": gen.id,
            "generation_status": GenerationStatus.CANCELED,
            "provider_cancel_sent": sent,
            "credits_refunded": refunded,
        }

    async def _cancel_upstream(self, gen: Generation) -> bool:
        """Stop the work wherever it runs; True when a running provider job was told to stop."""
        stopped_here = self.jobs.cancel_local(gen.id)
        state = gen.provider_state or {}
        adapter = self.providers.get(str(state.get("provider", "")))
        if adapter is None or not state.get("prediction_id"):
            return stopped_here
        try:
            return await adapter.cancel(str(state["prediction_id"])) or stopped_here
        except Exception:
            return stopped_here

    async def delete(self, account_id: str, generation_id: str) -> dict[str, Any]:
        gen = await self._owned(account_id, generation_id)
        if gen.status in lifecycle.ACTIVE:
            with contextlib.suppress(ApiError):
                await self.cancel(account_id, generation_id)
        files = await self.store.delete_generation(gen.id)
        async with self.db.write() as s:
            await lifecycle.delete_row(s, gen.id)
        return {"generation_id": gen.id, "files_deleted": files}

