"""Runway adapter: Gen-4 video and image models (and the partner models Runway hosts) as tasks.

Protocol facts this adapter relies on:

- Every call carries ``Authorization: Bearer <key>`` and a pinned ``X-Runway-Version``
  header; the API refuses requests without the version, and pinning it keeps the
  request and answer shapes from moving under us.
- Work starts with a POST to the endpoint of the *kind* of generation, not of the
  model: ``/v1/image_to_video`` (``promptImage`` required), ``/v1/text_to_video`` or
  ``/v1/text_to_image``; the model is the ``model`` body field. The answer is only
  ``{"id"}``. The endpoint therefore follows from the job (its type and whether it
  has an input image), and the model id stays a plain catalogue value.
- ``ratio`` is an output *resolution* in pixels ("1280:720"), and each model accepts
  its own short list, so a unified "16:9" becomes the model family's pixel string
  (the catalogue's ``values`` override this per model).
- One task makes one output, except on the few models with an ``outputCount``;
  ``output_number`` N is N tasks, and the prediction id is their ids joined by
  commas so that ``wait`` can poll each of them after a restart from that string.
- ``GET /v1/tasks/{id}`` moves PENDING / THROTTLED (queued) -> RUNNING (with
  ``progress``) -> SUCCEEDED (``output``: signed URLs that expire, so the worker
  downloads them at once) | FAILED (``failure`` and a dotted ``failureCode`` whose
  first segments say why: ``SAFETY.*`` and ``INPUT_PREPROCESSING.SAFETY.*`` are
  moderation refusals that must not be retried, ``ASSET.INVALID`` and other
  ``INPUT_PREPROCESSING.*`` a bad input, ``INTERNAL.*`` a transient failure) |
  CANCELLED.
- ``DELETE /v1/tasks/{id}`` cancels a task that has not finished (and deletes a
  finished one); a canceled or deleted task can no longer be fetched (404).
- Errors are a JSON object with a human-readable ``error``; an account without
  credits is told so in a plain 400, which only the text tells apart from a bad
  parameter.
- Optional fields differ per model (Veo and Gemini take no ``seed``, only Veo a
  ``negativePrompt``); the catalogue's ``fields`` may name one ``""`` to never send it.
- Input images may be HTTPS URLs or data URIs of up to 5 MB. The bytes the worker
  already fetched and checked are sent inline, so Runway sees exactly those (and
  needs no second download of a URL that may expire or refuse its crawler); a file
  too large for a data URI goes by its URL.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import httpx

from genplane.providers.base import (
    InputImage,
    ProviderError,
    ProviderJob,
    ProviderOutput,
    ProviderResult,
)
from genplane.providers.http import ProviderHttp, dig, json_body, key_headers
from genplane.providers.outputs import canceled_upstream
from genplane.settings import Settings

PROVIDER = "runway"
API_VERSION = "2024-11-06"
TASKS_PATH = "/v1/tasks"
IMAGE_TO_VIDEO = "/v1/image_to_video"
TEXT_TO_VIDEO = "/v1/text_to_video"
TEXT_TO_IMAGE = "/v1/text_to_image"
DATA_URI_MAX_CHARS = 5 * 1024 * 1024  # the API's limit on one encoded data URI

# Unified ratio -> Runway pixel ratio, by model family.
GEN4_VIDEO_RATIOS = {
    "16:9": "1280:720",
    "9:16": "720:1280",
    "4:3": "1104:832",
    "3:4": "832:1104",
    "1:1": "960:960",
    "21:9": "1584:672",
}
GEN3_VIDEO_RATIOS = {"16:9": "1280:768", "9:16": "768:1280"}
VEO_720P_RATIOS = {"16:9": "1280:720", "9:16": "720:1280"}
VEO_1080P_RATIOS = {"16:9": "1920:1080", "9:16": "1080:1920"}
GEN4_IMAGE_1080P_RATIOS = {
    "16:9": "1920:1080",
    "9:16": "1080:1920",
    "1:1": "1080:1080",
    "4:3": "1440:1080",
    "3:4": "1080:1440",
    "21:9": "2112:912",
}
GEN4_IMAGE_720P_RATIOS = {
    "16:9": "1280:720",
    "9:16": "720:1280",
    "1:1": "720:720",
    "4:3": "960:720",
    "3:4": "720:960",
    "21:9": "1680:720",
}

_EXTENSIONS = {
    ".mp4": ("mp4", "video/mp4"),
    ".png": ("png", "image/png"),
    ".jpg": ("jpg", "image/jpeg"),
    ".jpeg": ("jpg", "image/jpeg"),
    ".webp": ("webp", "image/webp"),
}


def pixel_ratio(job: ProviderJob) -> Any:
    """The ``ratio`` value for this job: the catalogue's, else the model family's pixels."""
    if "generation_ratio" in job.value_maps:
        return job.value("generation_ratio", job.ratio)
    ratio = job.ratio
    parts = ratio.split(":")
    if len(parts) == 2 and all(p.isdigit() and int(p) >= 100 for p in parts):
        return ratio  # already Runway pixels
    model = job.native_model_id.lower()
    if job.model_type == "image":
        table = GEN4_IMAGE_720P_RATIOS if job.resolution == "720p" else GEN4_IMAGE_1080P_RATIOS
    elif model.startswith("gen3"):
        table = GEN3_VIDEO_RATIOS
    elif model.startswith("veo"):
        table = VEO_1080P_RATIOS if job.resolution == "1080p" else VEO_720P_RATIOS
    else:
        table = GEN4_VIDEO_RATIOS
    return table.get(ratio, ratio)


def failure_error(code: str, message: str) -> ProviderError:
    """The contract error for a FAILED task's ``failureCode``."""
    text = f"{PROVIDER} task failed: {code or 'no failure code'}: {message or 'no reason given'}"
    segments = code.upper().split(".")
    if segments[0] == "SAFETY" or (len(segments) > 1 and segments[1] == "SAFETY"):
        return ProviderError("bse_content_policy_violation", text, retryable=False)
    if segments[0] == "ASSET" or (segments[0] == "INPUT_PREPROCESSING" and "INTERNAL" not in segments):
        return ProviderError("bse_invalid_input", text, retryable=False)
    return ProviderError("bse_provider_error", text, retryable=True)


def _refine(response: httpx.Response, shared: ProviderError) -> ProviderError:
    message = str(json_body(response).get("error") or "")
    lowered = message.lower()
    if response.status_code == 400 and "credits" in lowered:
        return ProviderError(
            "bse_provider_credits_exhausted", f"{PROVIDER}: {message}", retryable=False
        )
    if response.status_code == 400 and ("moderation" in lowered or "safety" in lowered):
        return ProviderError("bse_content_policy_violation", f"{PROVIDER}: {message}", retryable=False)
    return shared


def _unsettled(task: Any) -> bool:
    """PENDING, THROTTLED, RUNNING, or a state added since: polled again."""
    status = dig(task, "status")
    return isinstance(status, str) and status not in ("SUCCEEDED", "FAILED", "CANCELLED")


def _asset(image: InputImage) -> str:
    uri = image.data_uri
    return uri if len(uri) <= DATA_URI_MAX_CHARS else image.url


def _output(url: str, model_type: str) -> ProviderOutput:
    path = urlsplit(url).path.lower()
    for suffix, (ext, content_type) in _EXTENSIONS.items():
        if path.endswith(suffix):
            return ProviderOutput(ext=ext, content_type=content_type, url=url)
    ext, content_type = ("mp4", "video/mp4") if model_type == "video" else ("png", "image/png")
    return ProviderOutput(ext=ext, content_type=content_type, url=url)


class RunwayAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_key = settings.runway_api_key is not None
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.runway_base_url, _refine,
            headers={"X-Runway-Version": API_VERSION, **key_headers(settings.runway_api_key)},
        )

    def configured(self) -> bool:
        return self._has_key and bool(self.http.base_url)

    # -- submit ---------------------------------------------------------------------

    @staticmethod
    def endpoint(job: ProviderJob) -> str:
        if job.model_type == "image":
            return TEXT_TO_IMAGE
        return IMAGE_TO_VIDEO if job.inputs else TEXT_TO_VIDEO

    def request_body(self, job: ProviderJob, index: int = 0) -> dict[str, Any]:
        """The native body of the ``index``-th task of a job."""
        body: dict[str, Any] = {
            "model": job.native_model_id,
            job.name("generation_prompt", "promptText"): job.prompt,
            job.name("generation_ratio", "ratio"): pixel_ratio(job),
        }
        seed_name = job.optional_name("generation_seed", "seed")
        if job.seed is not None and seed_name:
            # Distinct seeds, or N tasks would make the same output N times.
            body[seed_name] = (job.seed + index) % 2**32
        negative = job.specific.get("generation_negative_prompt")
        negative_name = job.optional_name("generation_negative_prompt", "negativePrompt")
        if negative and negative_name:
            body[negative_name] = negative
        count_name = job.field_names.get("generation_output_number")
        if count_name:
            # A model with ``outputCount``: one task makes them all.
            body[count_name] = job.output_number
        format_name = job.field_names.get("generation_output_format")
        if format_name:
            body[format_name] = job.value("generation_output_format", job.output_format)
        if job.model_type == "image":
            if job.inputs:
                body[job.name("generation_input_file", "referenceImages")] = [
                    {"uri": _asset(image)} for image in job.inputs
                ]
        else:
            self._video_fields(job, body)
        body.update(job.params)
        return body

    @staticmethod
    def _video_fields(job: ProviderJob, body: dict[str, Any]) -> None:
        duration_name = job.optional_name("generation_duration", "duration")
        if job.duration is not None and duration_name:
            body[duration_name] = job.value("generation_duration", job.duration)
        audio_name = job.optional_name("generation_generate_audio", "audio")
        if job.generate_audio is not None and audio_name:
            body[audio_name] = job.value("generation_generate_audio", job.generate_audio)
        resolution_name = job.field_names.get("generation_resolution")
        if resolution_name and job.resolution:
            body[resolution_name] = job.value("generation_resolution", job.resolution)
        if not job.inputs:
            return
        name = job.name("generation_input_file", "promptImage")
        if job.last_frame is None:
            body[name] = _asset(job.inputs[0])
        else:
            body[name] = [
                {"uri": _asset(job.inputs[0]), "position": "first"},
                {"uri": _asset(job.last_frame), "position": "last"},
            ]

    def _task_count(self, job: ProviderJob) -> int:
        if job.field_names.get("generation_output_number"):
            return 1
        return max(1, job.output_number)

    async def submit(self, job: ProviderJob) -> str:
        path = self.endpoint(job)
        task_ids: list[str] = []
        try:
            for index in range(self._task_count(job)):
                answer = await self.http.json(
                    "POST", path, json=self.request_body(job, index)
                )
                task_id = dig(answer, "id")
                if not isinstance(task_id, str) or not task_id or "," in task_id:
                    raise ProviderError("bse_provider_error", f"{PROVIDER} answered without a task id.", True)
                task_ids.append(task_id)
        except (ProviderError, asyncio.CancelledError):
            # Tasks already started would run (and be billed) for an attempt that failed.
            if task_ids:
                await asyncio.shield(self._cancel_all(task_ids))
            raise
        return ",".join(task_ids)

    # -- wait -----------------------------------------------------------------------

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        task_ids = [t for t in prediction_id.split(",") if t]
        outputs: list[ProviderOutput] = []
        for position, task_id in enumerate(task_ids):
            try:
                urls = await self._wait_one(task_id)
            except ProviderError:
                await self._cancel_all(task_ids[position + 1 :])
                raise
            outputs.extend(_output(url, job.model_type) for url in urls)
        return ProviderResult(outputs=outputs)

    async def _wait_one(self, task_id: str) -> list[str]:
        try:
            task = await self.http.poll_while(f"{TASKS_PATH}/{task_id}", _unsettled)
        except ProviderError as exc:
            if exc.http_status == 404:
                raise ProviderError(
                    "bse_provider_error",
                    f"{PROVIDER} no longer knows task {task_id} (canceled or deleted upstream).",
                    retryable=True,
                    http_status=404,
                ) from exc
            raise
        status = dig(task, "status")
        if status == "SUCCEEDED":
            urls = dig(task, "output")
            if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
                raise ProviderError("bse_provider_error", f"{PROVIDER} succeeded without outputs.", True)
            return urls
        if status == "FAILED":
            code, reason = dig(task, "failureCode"), dig(task, "failure")
            raise failure_error(code if isinstance(code, str) else "", str(reason or "")[:300])
        if status == "CANCELLED":
            raise canceled_upstream(PROVIDER, task_id)
        raise ProviderError("bse_provider_error", f"{PROVIDER} sent a task without a status.", True)

    # -- cancel ---------------------------------------------------------------------

    async def cancel(self, prediction_id: str) -> bool:
        return await self._cancel_all([t for t in prediction_id.split(",") if t])

    async def _cancel_all(self, task_ids: list[str]) -> bool:
        if not task_ids:
            return False
        results = await asyncio.gather(*(self._cancel_one(t) for t in task_ids))
        return all(results)

    async def _cancel_one(self, task_id: str) -> bool:
        return await self.http.accepted("DELETE", f"{TASKS_PATH}/{task_id}")
