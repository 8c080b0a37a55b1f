"""Generation rules: create (validate, price, reserve, record, dispatch), read, cancel, delete."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from genplane.accounts.service import AuthContext
from genplane.catalog.loader import Catalog
from genplane.catalog.pricing import generation_cost_millis
from genplane.contract.envelope import dumps, success_body
from genplane.contract.errors import ApiError
from genplane.contract.status import GenerationStatus
from genplane.db.engine import Database
from genplane.db.models import Generation
from genplane.generations import idempotency, lifecycle
from genplane.generations.orphan_files import drop_unrecorded
from genplane.generations.queue import JobQueue
from genplane.generations.record import to_record
from genplane.generations.request import GenerationRequest, check_generation
from genplane.generations.routing import ProviderRanker
from genplane.net.fetch import PinnedFetcher
from genplane.providers.base import ProviderAdapter
from genplane.settings import Settings
from genplane.storage.store import FileStore


@dataclass(frozen=True)
class CreateResult:
    status_code: int
    body: bytes
    replayed: bool


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
        provider_order = await self.route(req)
        urls = [("generation_input_file", url) for url in req.input_file or []]
        if req.input_file_last_content:
            urls.append(("generation_input_file_last_content", req.input_file_last_content))
        for field, url in urls:  # also refused later, at fetch time, after redirects
            await self.fetcher.check_public(url, field)
        cost = generation_cost_millis(
            req.model,
            outputs=req.output_number,
            duration=req.duration,
            resolution=req.resolution,
            audio=bool(req.generate_audio),
        )
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
            await lifecycle.admit(s, gen, self.settings.max_inflight_for(auth.plan))
            if idempotency_key is not None:
                await idempotency.complete(s, auth.account_id, idempotency_key, 200, body)
        return gen, body

    async def route(self, req: GenerationRequest) -> list[str]:
        """The chain a new generation will try: explicit as sent, or ranked for ``fastest``."""

        def usable(p: str) -> bool:
            adapter = self.providers.get(p)
            return adapter is not None and adapter.configured()

        if req.provider_order_explicit:
            chain = req.provider_order
        else:
            chain = await self.ranker.rank(req.model, [p for p in req.provider_order if usable(p)])
        if not any(usable(p) for p in chain):
            raise ApiError(
                "bse_provider_unavailable",
                f"No configured provider serves {req.model.model_identifier} here "
                f"(it is served by {', '.join(req.model.providers)}).",
                details={"providers": list(req.model.providers)},
            )
        return chain

    async def _owned(self, account_id: str, generation_id: str) -> Generation:
        async with self.db.read() as s:
            gen = await s.get(Generation, generation_id)
        if gen is None or gen.account_id != account_id:
            raise ApiError("bse_generation_not_found", details={"generation_id": generation_id})
        return gen

    async def get(self, account_id: str, generation_id: str) -> dict[str, Any]:
        return to_record(await self._owned(account_id, generation_id))

    async def list(self, account_id: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        async with self.db.read() as s:
            total = await s.scalar(
                select(func.count()).select_from(Generation).where(Generation.account_id == account_id)
            )
            rows = await s.scalars(
                select(Generation)
                .where(Generation.account_id == account_id)
                .order_by(Generation.created_at.desc(), Generation.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return [to_record(g) for g in rows.all()], int(total or 0)

    async def cancel(self, account_id: str, generation_id: str) -> dict[str, Any]:
        async with self.db.write() as s:
            gen, refunded = await lifecycle.cancel(s, account_id, generation_id)
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

