"""fal: the durable queue API (submit, poll status, fetch the result, cancel).

Protocol facts this adapter relies on:

- ``POST {queue}/{model_id}`` with ``Authorization: Key <key>`` and the model's input
  as the JSON body enqueues a request and answers ``request_id`` (plus ready-made
  status, response and cancel URLs).
- Status, result and cancel live under the model's *app* id, not the full endpoint id:
  ``owner/alias`` with any sub-path dropped (``fal-ai/flux/dev`` -> ``fal-ai/flux``),
  keeping a ``workflows/`` or ``comfy/`` namespace in front. The prediction id this
  adapter returns is ``<app>|<request_id>`` so that polling after a restart needs
  nothing else (``<app>|<id>,<id>`` when a model makes one output per call).
- ``GET .../requests/{id}/status`` answers ``IN_QUEUE`` (with ``queue_position``),
  ``IN_PROGRESS`` or ``COMPLETED``; COMPLETED says only that the request ended. Whether
  it worked is the answer of ``GET .../requests/{id}``: the model's output on 2xx, or an
  error. Model errors carry ``detail`` as a list of typed objects (``type`` such as
  ``content_policy_violation`` or ``image_too_large``); platform errors carry a string
  ``detail`` and ``error_type`` (``client_cancelled`` after a cancel, runner failures).
  ``X-Fal-Retryable: false`` says the same input would fail again.
- Image models return ``images: [{url, content_type, ...}]`` and, where a safety checker
  ran, ``has_nsfw_concepts`` aligned with them (flagged images are blacked out, so they
  are dropped); video models return ``video: {url, ...}``.
- ``PUT .../requests/{id}/cancel`` answers 202 when the cancel was accepted (queued
  requests are removed, running ones are signalled) and 400 once the request finished.
- An exhausted balance is a 403 whose detail says so, not a 402.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from genplane.contract.errors import ErrorName
from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.hosted_models import CustomaryNames, model_input, one_call_per_output
from genplane.providers.http import ProviderHttp, dig, error_for_status, key_headers
from genplane.providers.outputs import canceled_upstream, output_for
from genplane.providers.sizes import aspect, size_within_area
from genplane.settings import Settings

PROVIDER = "fal"
RUNNING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
_NAMESPACES = frozenset({"workflows", "comfy"})
_LEGACY_APP_ID = re.compile(r"^([0-9]+)-([a-zA-Z0-9-]+)$")
# fal's typed model errors that name a contract error of their own.
_TYPED_ERRORS: dict[str, ErrorName] = {
    "content_policy_violation": "bse_content_policy_violation",
    "image_too_large": "bse_file_too_large",
    "image_too_small": "bse_file_too_small",
    "image_load_error": "bse_file_load_error",
    "file_download_error": "bse_file_download_error",
    "file_too_large": "bse_file_size_exceeded",
    "feature_not_supported": "bse_unsupported_parameter",
}
# Unified ratios -> fal's named ``image_size`` presets and the sizes fal gives them
# (https://docs.fal.ai/documentation/model-apis/model-arguments); others are sent as width/height.
_IMAGE_SIZE_PRESETS = {
    "1:1": ("square_hd", (1024, 1024)),
    "4:3": ("landscape_4_3", (1024, 768)),
    "16:9": ("landscape_16_9", (1024, 576)),
    "3:4": ("portrait_4_3", (768, 1024)),
    "9:16": ("portrait_16_9", (576, 1024)),
}
#: fal bills per-megapixel models by each started megapixel of 1024 x 1024 pixels (its model
#: pages: "billed by rounding up to the nearest megapixel"): sizes stay within one.
_IMAGE_AREA = 1024 * 1024
NAMES = CustomaryNames(
    output_number="num_images",
    image_input="image_urls",
    frame_input="image_url",
    last_frame="end_image_url",
    list_inputs=frozenset({"image_urls", "input_image_urls", "reference_image_urls"}),
)
# Result fetches that hit a busy edge (not a model answer) are retried this often.
_RESULT_FETCH_RETRIES = 5


def app_id(model_id: str) -> str:
    """The app part of a fal endpoint id, which status/result/cancel paths use."""
    parts = [p for p in model_id.strip().strip("/").split("/") if p]
    if len(parts) == 1:
        legacy = _LEGACY_APP_ID.match(parts[0])
        if legacy is None:
            raise ProviderError("bse_model_not_configured", f"{model_id!r} is not a fal model id.", False)
        parts = [legacy.group(1), legacy.group(2)]
    if parts[0] in _NAMESPACES:
        if len(parts) < 3:
            raise ProviderError("bse_model_not_configured", f"{model_id!r} is not a fal model id.", False)
        return "/".join(parts[:3])
    return "/".join(parts[:2])


def image_size(ratio: str) -> str | dict[str, int]:
    """fal's ``image_size`` for a unified ratio: a preset, or the largest size within a
    megapixel in 16-px steps (1568x672 for 21:9 would be billed as two megapixels)."""
    preset = _IMAGE_SIZE_PRESETS.get(ratio)
    if preset:
        return preset[0]
    if aspect(ratio, default=0.0) == 0.0:
        return "square_hd"
    width, height = size_within_area(ratio, _IMAGE_AREA, 16)
    return {"width": width, "height": height}


def dimensions(ratio: str) -> tuple[int, int]:
    """The pixels fal makes for :func:`image_size` (what a per-megapixel cost is computed on)."""
    preset = _IMAGE_SIZE_PRESETS.get(ratio)
    if preset:
        return preset[1]
    size = image_size(ratio)
    return (1024, 1024) if isinstance(size, str) else (size["width"], size["height"])


def _body(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _mapped(job: ProviderJob, unified: str, value: Any) -> bool:
    """Whether the catalogue translates this value itself (then no built-in translation applies)."""
    return str(value) in job.value_maps.get(unified, {})


def _messages(detail: list[Any]) -> str:
    return "; ".join(str(dig(d, "msg") or dig(d, "type") or d) for d in detail)[:300]


class FalAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_key = settings.fal_key is not None
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.fal_queue_url, FalAdapter.error,
            headers=key_headers(settings.fal_key, scheme="Key"),
        )

    def configured(self) -> bool:
        return self._has_key

    # -- request ---------------------------------------------------------------------

    def native_input(self, job: ProviderJob, index: int = 0, per_call: bool = False) -> dict[str, Any]:
        """The model's input for one request; a field the catalogue maps to ``""`` is not sent."""
        body = model_input(job, NAMES, index, per_call)
        default_ratio = "aspect_ratio" if job.model_type == "video" else "image_size"
        ratio_name = job.name("generation_ratio", default_ratio)
        if ratio_name and job.ratio:
            if ratio_name == "image_size" and not _mapped(job, "generation_ratio", job.ratio):
                body[ratio_name] = image_size(job.ratio)
            else:
                body[ratio_name] = job.value("generation_ratio", job.ratio)
        if job.model_type == "image":
            name = job.name("generation_output_format", "output_format")
            if name:
                fmt = job.value("generation_output_format", job.output_format)
                if not _mapped(job, "generation_output_format", job.output_format):
                    fmt = {"jpg": "jpeg"}.get(job.output_format, job.output_format)  # fal says jpeg
                body[name] = fmt
        duration_name = job.name("generation_duration", "duration")
        if job.model_type == "video" and job.duration is not None and duration_name:
            # fal's video models take the duration as a string enum ("5", "10").
            mapped = _mapped(job, "generation_duration", job.duration)
            duration = job.value("generation_duration", job.duration) if mapped else str(job.duration)
            body[duration_name] = duration
        body.update(job.params)
        return body

    async def submit(self, job: ProviderJob) -> str:
        app = app_id(job.native_model_id)
        endpoint = "/".join(quote(p, safe="") for p in job.native_model_id.strip().strip("/").split("/") if p)
        per_call = one_call_per_output(job, NAMES)
        ids: list[str] = []
        try:
            for index in range(job.output_number if per_call else 1):
                native = self.native_input(job, index, per_call)
                response = await self.http.send("POST", f"/{endpoint}", json=native)
                request_id = dig(self.http.decode(response), "request_id")
                if not isinstance(request_id, str) or not request_id or "," in request_id:
                    raise ProviderError("bse_provider_error", f"{PROVIDER} sent no request id.", True)
                ids.append(request_id)
        except ProviderError:
            for started in ids:  # a half-submitted batch is useless: stop paying for it
                await self._cancel_one(app, started)
            raise
        return f"{app}|{','.join(ids)}"

    # -- result ----------------------------------------------------------------------

    @staticmethod
    def _parse_id(prediction_id: str) -> tuple[str, list[str]]:
        app, sep, rest = prediction_id.partition("|")
        ids = [r for r in rest.split(",") if r]
        if not sep or not app or not ids:
            raise ProviderError("bse_provider_error", f"Malformed {PROVIDER} prediction id.", False)
        return app, ids

    def _request_path(self, app: str, request_id: str) -> str:
        return f"/{app}/requests/{quote(request_id, safe='')}"

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        app, ids = self._parse_id(prediction_id)
        outputs: list[ProviderOutput] = []
        predict_time: float | None = None
        flagged = 0
        for position, request_id in enumerate(ids):
            try:
                took = await self._until_done(app, request_id)
                result = await self._result(app, request_id)
            except ProviderError:
                for other in ids[position + 1 :]:
                    await self._cancel_one(app, other)
                raise
            clean, dropped = self.outputs(job, result)
            outputs.extend(clean)
            flagged += dropped
            if took is not None:
                predict_time = max(predict_time or 0.0, took)
        if not outputs:
            if flagged:
                raise ProviderError(
                    "bse_content_policy_violation",
                    f"{PROVIDER}'s safety checker flagged every output of {prediction_id}.",
                    retryable=False,
                )
            raise ProviderError("bse_provider_error", f"{PROVIDER} finished without any output file.", True)
        return ProviderResult(outputs=outputs[: job.output_number], predict_time=predict_time)

    async def _until_done(self, app: str, request_id: str) -> float | None:
        """Poll until COMPLETED; the runner's inference time when fal reports it."""
        path = f"{self._request_path(app, request_id)}/status"
        status = await self.http.poll_while(path, lambda answer: dig(answer, "status") in RUNNING)
        state = dig(status, "status")
        if state != "COMPLETED":
            message = f"{PROVIDER} reported an unknown status {str(state)[:40]!r}."
            raise ProviderError("bse_provider_error", message, True)
        took = dig(status, "metrics", "inference_time")
        return float(took) if isinstance(took, int | float) else None

    async def _result(self, app: str, request_id: str) -> Any:
        """The finished request's answer: its output, or the error it ended with."""
        path = self._request_path(app, request_id)
        for attempt in range(_RESULT_FETCH_RETRIES + 1):
            try:
                response = await self.http.send("GET", path)
            except ProviderError as exc:
                # A rate limit, a timeout or a bare edge error is not the request's answer.
                transient = exc.http_status in (429, 502, 503, 504) or exc.error == "bse_provider_timeout"
                if not transient or exc.retryable is False or attempt == _RESULT_FETCH_RETRIES:
                    raise
                await self.http.pause()
                continue
            return self.http.decode(response)
        raise AssertionError("unreachable")

    def outputs(self, job: ProviderJob, result: Any) -> tuple[list[ProviderOutput], int]:
        """The output files of one result, and how many the safety checker flagged."""
        files: list[Any] = []
        for key in ("images", "videos"):
            if isinstance(dig(result, key), list):
                files.extend(result[key])
        for key in ("image", "video"):
            if isinstance(dig(result, key), dict):
                files.append(result[key])
        flags = dig(result, "has_nsfw_concepts")
        flags = flags if isinstance(flags, list) else []
        outputs: list[ProviderOutput] = []
        dropped = 0
        for i, file in enumerate(files):
            url = dig(file, "url")
            if not isinstance(url, str) or not url:
                continue
            if i < len(flags) and flags[i] is True:
                dropped += 1
                continue
            outputs.append(output_for(PROVIDER, url, job, dig(file, "content_type")))
        return outputs, dropped

    # -- fal's error bodies -------------------------------------------------------------

    @staticmethod
    def error(response: httpx.Response, shared: ProviderError | None = None) -> ProviderError:
        """fal's typed error bodies and headers, read before the status code's mapping."""
        status = response.status_code
        body = _body(response)
        detail = dig(body, "detail")
        retryable_header = response.headers.get("x-fal-retryable", "").lower()
        if isinstance(detail, list) and detail:
            types = [str(dig(d, "type") or "") for d in detail]
            for fal_type, contract in _TYPED_ERRORS.items():
                if fal_type in types:
                    message = f"{PROVIDER} refused the request ({fal_type}): {_messages(detail)}"
                    return ProviderError(contract, message, retryable=False, http_status=status)
            if status in (400, 422):
                message = f"{PROVIDER} rejected the input: {_messages(detail)}"
                return ProviderError("bse_invalid_input", message, retryable=False, http_status=status)
        error_type = dig(body, "error_type") or response.headers.get("x-fal-error-type")
        if error_type == "client_cancelled":
            err = canceled_upstream(PROVIDER, response.headers.get("x-fal-request-id") or "?")
            err.http_status = status
            return err
        if status == 403 and isinstance(detail, str) and "balance" in detail.lower():
            message = f"{PROVIDER} account is out of balance: {detail[:200]}"
            return ProviderError("bse_provider_credits_exhausted", message, False, http_status=status)
        err = error_for_status(PROVIDER, response)
        if err.error == "bse_provider_error" and retryable_header == "false":
            err.retryable = False
        return err

    # -- cancel ----------------------------------------------------------------------

    async def cancel(self, prediction_id: str) -> bool:
        app, ids = self._parse_id(prediction_id)
        results = [await self._cancel_one(app, one) for one in ids]
        return all(results)

    async def _cancel_one(self, app: str, request_id: str) -> bool:
        return await self.http.accepted("PUT", f"{self._request_path(app, request_id)}/cancel")
