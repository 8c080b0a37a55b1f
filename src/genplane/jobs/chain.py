"""One generation's run through its provider chain: inputs in, outputs out.

The worker owns leases and money; this module owns what happens between: fetching
the client's input files safely, trying each provider in order, failing over only
when another provider could do better, and downloading the outputs before the
provider's URLs expire. Every attempt is recorded, because routing, health and
usage are all computed from those records.

Three rules keep money from leaking:

- a job interrupted by a restart resumes *waiting* on the prediction it had already
  started (the id is in ``provider_state``) instead of paying for a second one; only a
  synchronous provider's result, held by the process that died, is asked for again
  (:class:`PredictionLost`: the provider is not at fault, no failure is recorded);
- on a deadline or a cancel the upstream job is canceled where the provider allows;
- a download that fails after the provider finished is retried (``fetch_output``)
  before the attempt counts as failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog

from genplane.catalog.loader import Catalog, ModelEntry, ProviderBinding
from genplane.clock import as_utc, utcnow
from genplane.contract.errors import ERRORS, ApiError, ErrorName
from genplane.contract.spec import SPEC_FIELDS
from genplane.contract.status import AttemptOutcome
from genplane.db.models import Generation
from genplane.jobs.fetch import FileFetcher
from genplane.jobs.media import in_requested_format
from genplane.providers.base import (
    InputImage,
    PredictionLost,
    ProviderAdapter,
    ProviderError,
    ProviderJob,
    ProviderOutput,
    ProviderResult,
)
from genplane.providers.http import MAX_RETRY_AFTER_SECONDS
from genplane.settings import Settings

log = structlog.get_logger("genplane.chain")

# How often one provider's submit is retried after a 429 before the chain moves on.
SUBMIT_RATE_LIMIT_RETRIES = 2


def provider_error_entry(provider: str, error: str, message: str, retryable: bool) -> dict[str, Any]:
    spec = ERRORS[error]
    return {
        "provider": provider,
        "error": error,
        "code": spec.code,
        "type": spec.type,
        "message": message,
        "retryable": retryable,
    }


class ChainFailed(Exception):
    def __init__(self, error: ErrorName, message: str, provider_errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.provider_errors = provider_errors


@dataclass(frozen=True)
class ChainSuccess:
    provider: str
    prediction_id: str
    started_at: datetime
    outputs: list[ProviderOutput]  # every output with its bytes
    predict_time: float | None


RecordAttempt = Callable[[str, str, datetime, str | None, str | None], Awaitable[None]]
NotePrediction = Callable[[str, str], Awaitable[None]]


class ProviderChain:
    def __init__(
        self,
        catalog: Catalog,
        providers: dict[str, ProviderAdapter],
        fetcher: FileFetcher,
        settings: Settings,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.fetcher = fetcher
        self.settings = settings

    def attempt_deadline(self, model_type: str) -> float:
        if model_type == "video":
            return self.settings.video_attempt_deadline_seconds
        return self.settings.image_attempt_deadline_seconds

    async def run(
        self,
        gen: Generation,
        *,
        record_attempt: RecordAttempt,
        note_prediction: NotePrediction,
        user_canceled: Callable[[], bool],
    ) -> ChainSuccess:
        model = self.catalog.models.get(gen.model_identifier)
        if model is None:
            raise ChainFailed(
                "bse_model_not_configured", f"{gen.model_identifier} is no longer in the catalogue.", []
            )
        inputs, last_frame = await self._fetch_inputs(gen)
        resume = dict(gen.provider_state or {})
        chain = list(gen.provider_order)
        if resume.get("provider") in chain:
            # Providers before the one that was running already failed in an earlier life.
            chain = chain[chain.index(resume["provider"]) :]
        errors: list[dict[str, Any]] = []
        # The overall deadline counts from the first start, so restarts do not extend it.
        overall = self.settings.generation_deadline_seconds
        ends_at = as_utc(gen.started_at or utcnow()) + timedelta(seconds=overall)
        for provider_id in chain:
            remaining = (ends_at - utcnow()).total_seconds()
            if remaining <= 0:
                message = f"The generation did not finish within {overall:.0f} s."
                raise ChainFailed("bse_provider_timeout", message, errors)
            adapter = self.providers.get(provider_id)
            binding = model.providers.get(provider_id)
            if adapter is None or binding is None or not adapter.configured():
                message = f"{provider_id} is not configured here."
                errors.append(provider_error_entry(provider_id, "bse_provider_unavailable", message, True))
                continue
            if not binding.live_on(utcnow().date()):  # admitted before its retire_after passed
                message = (
                    f"{provider_id} stopped serving {model.model_identifier} after {binding.retire_after}."
                )
                errors.append(provider_error_entry(provider_id, "bse_provider_unavailable", message, False))
                continue
            job = self.job(gen, model, binding, inputs, last_frame)
            started = utcnow()
            prediction_id = resume.get("prediction_id") if resume.get("provider") == provider_id else None
            resume = {}
            try:
                prediction_id, result = await self._attempt(
                    adapter, job, prediction_id, note_prediction, remaining, first=provider_id == chain[0]
                )
                outputs = await self._download(result, gen.model_type, job.output_format)
            except ProviderError as exc:
                await record_attempt(provider_id, AttemptOutcome.FAILED, started, exc.error, exc.message)
                errors.append(provider_error_entry(provider_id, exc.error, exc.message, exc.retryable))
                if exc.stops_chain:
                    raise ChainFailed(exc.error, exc.message, errors) from exc
                continue
            except asyncio.CancelledError:
                if user_canceled():
                    if prediction_id:
                        await asyncio.shield(self._cancel_upstream(adapter, prediction_id))
                    canceled = record_attempt(provider_id, AttemptOutcome.CANCELED, started, None, None)
                    await asyncio.shield(canceled)
                raise
            return ChainSuccess(provider_id, prediction_id, started, outputs, result.predict_time)
        raise ChainFailed("bse_all_providers_failed", "Every provider in the chain failed.", errors)

    def job(
        self,
        gen: Generation,
        model: ModelEntry,
        binding: ProviderBinding,
        inputs: list[InputImage],
        last_frame: InputImage | None,
    ) -> ProviderJob:
        spec = {f.name: getattr(gen, f.name) for f in SPEC_FIELDS}
        return ProviderJob(
            **{
                **spec,
                "ratio": gen.ratio or model.schema_.generation_ratio[0],
                "output_format": gen.output_format or model.schema_.generation_output_format[0],
                "specific": dict(gen.specific or {}),
            },
            generation_id=gen.id,
            model_identifier=gen.model_identifier,
            native_model_id=binding.input_model_id
            if (inputs or last_frame) and binding.input_model_id
            else binding.model_id,
            model_type=gen.model_type,
            params=dict(binding.params),
            field_names=dict(binding.fields),
            value_maps={k: dict(v) for k, v in binding.values.items()},
            inputs=inputs,
            last_frame=last_frame,
        )

    async def _fetch_inputs(self, gen: Generation) -> tuple[list[InputImage], InputImage | None]:
        limit = self.settings.max_input_file_bytes

        async def one(url: str, field: str) -> InputImage:
            try:
                got = await self.fetcher.fetch_input_image(url, field, max_bytes=limit)
            except ApiError as exc:
                raise ChainFailed(exc.name, exc.text, []) from exc
            return InputImage(url=url, data=got.data, content_type=got.content_type)

        inputs = [await one(url, "generation_input_file") for url in gen.input_file or []]
        last = None
        if gen.input_file_last_content:
            last = await one(gen.input_file_last_content, "generation_input_file_last_content")
        return inputs, last

    async def _attempt(
        self,
        adapter: ProviderAdapter,
        job: ProviderJob,
        prediction_id: str | None,
        note_prediction: NotePrediction,
        remaining: float,
        *,
        first: bool = False,
    ) -> tuple[str, ProviderResult]:
        """Submit (or resume) and wait, within the per-attempt and the overall deadline.

        ``first``: the provider is where a restarted job would start its chain anyway.
        """
        deadline = min(self.attempt_deadline(job.model_type), remaining)
        ends = time.monotonic() + deadline
        try:
            async with asyncio.timeout(deadline):
                result = None
                if prediction_id is not None:  # resumed after a restart
                    try:
                        result = await adapter.wait(job, prediction_id)
                    except PredictionLost:
                        log.info("prediction_lost", provider=adapter.provider_id, prediction_id=prediction_id)
                if result is None:
                    prediction_id = await self._submit(adapter, job, ends)
                    result = await self._wait_noted(adapter, job, prediction_id, note_prediction, first)
        except TimeoutError as exc:
            if prediction_id:
                await self._cancel_upstream(adapter, prediction_id)
            raise ProviderError(
                "bse_provider_timeout",
                f"{adapter.provider_id} did not finish within {deadline:.0f} s.",
                retryable=True,
            ) from exc
        assert prediction_id is not None  # submitted or resumed: either way an id is known
        if not result.outputs:
            raise ProviderError("bse_provider_error", f"{adapter.provider_id} returned no output.", True)
        return prediction_id, result

    @staticmethod
    async def _wait_noted(
        adapter: ProviderAdapter,
        job: ProviderJob,
        prediction_id: str,
        note_prediction: NotePrediction,
        first: bool,
    ) -> ProviderResult:
        """Wait for a submitted prediction, its id noted on the row before the wait goes on.

        The note is what lets a restarted job resume waiting instead of paying for a second
        prediction, and lets a cancel from any process stop it. A synchronous provider's
        result is already in hand when ``submit`` returns (held in this process's memory,
        which a restart loses anyway), so its wait ends in its first step; when that happens
        to the chain's first provider the note would change nothing (a restart starts there
        in any case) and its transaction is saved. Any other wait goes on only once noted.
        """
        if not first:
            await note_prediction(adapter.provider_id, prediction_id)
            return await adapter.wait(job, prediction_id)
        waiting = asyncio.ensure_future(adapter.wait(job, prediction_id))
        try:
            await asyncio.sleep(0)  # the wait's first step, which ends it when the result is here
            if not waiting.done():
                await note_prediction(adapter.provider_id, prediction_id)
            return await waiting
        finally:
            if not waiting.done():  # the note failed, or this job was canceled
                waiting.cancel()
            elif not waiting.cancelled():
                waiting.exception()  # retrieved: whatever it was, it is raised above or moot

    async def _submit(self, adapter: ProviderAdapter, job: ProviderJob, ends: float) -> str:
        """Submit, waiting out a short Retry-After on 429 rather than failing over at once."""
        for attempt in range(SUBMIT_RATE_LIMIT_RETRIES + 1):
            try:
                return await adapter.submit(job)
            except ProviderError as exc:
                wait = exc.retry_after
                if (
                    exc.http_status != 429
                    or wait is None
                    or wait > MAX_RETRY_AFTER_SECONDS
                    or attempt == SUBMIT_RATE_LIMIT_RETRIES
                    or time.monotonic() + wait >= ends
                ):
                    raise
                log.info("provider_rate_limited", provider=adapter.provider_id, retry_after=wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _download(self, result: ProviderResult, model_type: str, fmt: str) -> list[ProviderOutput]:
        """Every output as bytes in the requested format, URLs fetched before they expire."""
        kind: Literal["image", "video"] = "video" if model_type == "video" else "image"
        outputs = []
        for output in result.outputs:
            if output.data is not None:
                outputs.append(await in_requested_format(output, kind, fmt))
                continue
            if not output.url:
                message = "The provider returned an output without data."
                raise ProviderError("bse_provider_error", message, retryable=True)
            got = await self.fetcher.fetch_output(
                output.url, max_bytes=self.settings.max_output_file_bytes, kind=kind
            )
            fetched = ProviderOutput(ext=got.ext, content_type=got.content_type, data=got.data)
            outputs.append(await in_requested_format(fetched, kind, fmt))
        return outputs

    async def _cancel_upstream(self, adapter: ProviderAdapter, prediction_id: str) -> None:
        try:
            await adapter.cancel(prediction_id)
        except Exception:
            log.warning("provider_cancel_failed", provider=adapter.provider_id, prediction_id=prediction_id)

