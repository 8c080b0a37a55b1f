"""Alibaba Cloud Model Studio (DashScope): Wan images and videos, Qwen-Image.

Protocol facts this adapter relies on:

- ``Authorization: Bearer <key>``; the key belongs to one region, whose host is the
  base URL (Singapore ``dashscope-intl``, Beijing ``dashscope``).
- Wan image and video generation only run as asynchronous tasks: the create call
  must carry ``X-DashScope-Async: enable`` (without it the service refuses the call),
  and answers ``output.task_id`` / ``output.task_status``. The body is always
  ``{model, input: {prompt, negative_prompt, <image urls>}, parameters: {...}}``.
  The service path depends on the task, not only on the model:
  ``text2image/image-synthesis`` (wan t2i), ``image2image/image-synthesis`` (edits,
  ``input.images``), ``video-generation/video-synthesis`` (t2v with
  ``parameters.size`` "1280*720"; i2v with ``input.img_url`` and
  ``parameters.resolution`` "720P", the frame following the image) and
  ``image2video/video-synthesis`` (first+last frame "kf2v" models,
  ``input.first_frame_url`` / ``input.last_frame_url``). A catalogue binding can name
  the path itself with the param ``endpoint`` (e.g. ``text2image/image-synthesis``);
  other params go to ``parameters``, or to ``input`` when spelt ``input.<name>``.
- ``GET /api/v1/tasks/{id}`` reports PENDING -> RUNNING -> SUCCEEDED | FAILED |
  CANCELED; UNKNOWN means the id is not (or no longer, after 24 h) known. Results are
  ``output.results[].url`` for images (an item may instead carry ``code``/``message``
  when only that image was refused) and ``output.video_url`` for videos; URLs expire
  after 24 h. A failed task carries ``output.code`` / ``output.message``.
- ``POST /api/v1/tasks/{id}/cancel`` works only while the task is PENDING.
- Sizes are "W*H" strings whose limits differ by family (Wan 2.2: each side 512-1440;
  Wan 2.5 and later: total pixels between 1280*1280 and 1440*1440; Qwen-Image: a few
  fixed sizes), so a unified ratio is turned into the family's size for it.
- Qwen-Image models answer synchronously on ``multimodal-generation/generation``
  with a chat-shaped body (``input.messages[0].content`` = images then text) and
  return ``output.choices[].message.content[].image``; only some of them accept
  ``n`` > 1, so each requested image is its own call. Results of synchronous calls
  are held in memory between ``submit`` and ``wait``.
- Errors are ``{code, message, request_id}`` and the code decides: moderation is
  ``DataInspectionFailed`` (also ``IPInfringementSuspect``) on a plain 400, an
  account in arrears is ``Arrearage`` on a 400 too, and a spent free tier with
  "free tier only" on is ``AllocationQuota.FreeTierOnly``; ``Throttling*`` are 429s.
- Input images are passed by URL (the client's URL, which the worker already
  fetched and checked is public).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.error_codes import CodeMeanings, coded_error, meaning_by_prefix
from genplane.providers.http import HeldResults, ProviderHttp, dig, json_body, key_headers
from genplane.providers.outputs import canceled_upstream
from genplane.providers.sizes import aspect, size_near_area
from genplane.settings import Settings

PROVIDER = "alibabacloud"
SERVICES = "/api/v1/services/aigc/"
TEXT2IMAGE = "text2image/image-synthesis"
IMAGE2IMAGE = "image2image/image-synthesis"
MULTIMODAL = "multimodal-generation/generation"
VIDEO = "video-generation/video-synthesis"
KEYFRAMES = "image2video/video-synthesis"
TASKS = "/api/v1/tasks/"
SYNC_ID_PREFIX = "sync-"  # ids of synchronous calls; DashScope task ids are UUIDs
ASYNC_HEADERS = {"X-DashScope-Async": "enable"}

# Wan 2.2 text-to-image: each side within [512, 1440].
WAN_IMAGE_SIZES = {
    "1:1": "1024*1024",
    "16:9": "1280*720",
    "9:16": "720*1280",
    "4:3": "1024*768",
    "3:4": "768*1024",
    "3:2": "1248*832",
    "2:3": "832*1248",
    "21:9": "1344*576",
}
# Wan 2.5 and later: total pixels within [1280*1280, 1440*1440] (the published presets).
WAN25_IMAGE_SIZES = {
    "1:1": "1280*1280",
    "16:9": "1696*960",
    "9:16": "960*1696",
    "4:3": "1472*1104",
    "3:4": "1104*1472",
}
# Qwen-Image: the sizes the model is published with.
QWEN_IMAGE_SIZES = {
    "1:1": "1328*1328",
    "16:9": "1664*928",
    "9:16": "928*1664",
    "4:3": "1472*1104",
    "3:4": "1104*1472",
}
# Wan text-to-video sizes per resolution tier and ratio.
VIDEO_SIZES = {
    "480p": {"16:9": "832*480", "9:16": "480*832", "1:1": "624*624"},
    "720p": {"16:9": "1280*720", "9:16": "720*1280", "1:1": "960*960", "4:3": "1088*832", "3:4": "832*1088"},
    "1080p": {
        "16:9": "1920*1080",
        "9:16": "1080*1920",
        "1:1": "1440*1440",
        "4:3": "1632*1248",
        "3:4": "1248*1632",
    },
}

RUNNING = frozenset({"PENDING", "RUNNING", "SUSPENDED"})
DASHSCOPE_CODES: CodeMeanings = (
    # The worker already downloaded the same file: the provider's fetch failed, not the input
    # (listed before "BadRequest", which is a bad input).
    ("bse_provider_error", ("BadRequest.InputDownloadFailed",)),
    ("bse_content_policy_violation", ("DataInspectionFailed", "DataInspection", "IPInfringementSuspect")),
    ("bse_provider_credits_exhausted", ("Arrearage", "AllocationQuota.FreeTierOnly")),
    (
        "bse_provider_unavailable",
        ("InvalidApiKey", "AccessDenied", "Model.AccessDenied", "Workspace.AccessDenied", "Throttling"),
    ),
    ("bse_invalid_input", ("InvalidParameter", "BadRequest", "InvalidURL", "InvalidFile")),
)


def dashscope_error(code: str, message: str, fallback: ProviderError | None = None) -> ProviderError:
    """The contract error for a DashScope error code (HTTP answer, failed task or result item)."""
    text = f"{PROVIDER}: {code or 'error'}: {message}"
    err = coded_error(meaning_by_prefix(code, DASHSCOPE_CODES), text, fallback)
    if code.startswith("Throttling") and fallback is not None:
        err.retry_after = fallback.retry_after  # the wait the 429 asked for
    return err


def _refine(response: httpx.Response, shared: ProviderError) -> ProviderError:
    body = json_body(response)
    code = body.get("code")
    if not isinstance(code, str) or not code:
        return shared
    return dashscope_error(code, str(body.get("message") or ""), fallback=shared)


def _ratio_size(ratio: str, area: int = 1024 * 1024, step: int = 16) -> str | None:
    """W*H for a ratio like "5:4" at about ``area`` pixels, sides a multiple of ``step``."""
    if aspect(ratio, default=0.0) == 0.0:
        return None
    width, height = size_near_area(ratio, area, step)
    return f"{width}*{height}"


def _image_sizes(model: str) -> tuple[dict[str, str], int]:
    """The ratio -> size table of an image model family, and the area for other ratios."""
    model = model.lower()
    if model.startswith("qwen-image"):
        return QWEN_IMAGE_SIZES, 1328 * 1328
    if model.startswith(("wan2.2", "wan2.1", "wanx")):
        return WAN_IMAGE_SIZES, 1024 * 1024
    return WAN25_IMAGE_SIZES, 1360 * 1360



def _image_output(url: str) -> ProviderOutput:
    path = urlsplit(url).path.lower()
    if path.endswith((".jpg", ".jpeg")):
        return ProviderOutput(ext="jpg", content_type="image/jpeg", url=url)
    if path.endswith(".webp"):
        return ProviderOutput(ext="webp", content_type="image/webp", url=url)
    return ProviderOutput(ext="png", content_type="image/png", url=url)  # what Wan and Qwen-Image make


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return None


def _predict_time(output: Any) -> float | None:
    start = _timestamp(dig(output, "scheduled_time")) or _timestamp(dig(output, "submit_time"))
    end = _timestamp(dig(output, "end_time"))
    if start is None or end is None or end < start:
        return None
    return round((end - start).total_seconds(), 3)


class AlibabaCloudAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_key = settings.alibabacloud_api_key is not None
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.alibabacloud_base_url, _refine,
            headers=key_headers(settings.alibabacloud_api_key),
        )
        self.held = HeldResults(PROVIDER)

    def configured(self) -> bool:
        return self._has_key and bool(self.http.base_url)

    # ---------------------------------------------------------------- routing

    @staticmethod
    def endpoint(job: ProviderJob) -> str:
        named = job.params.get("endpoint")
        if isinstance(named, str) and named:
            return named.strip("/")
        model = job.native_model_id.lower()
        if job.model_type == "video":
            return KEYFRAMES if "kf2v" in model else VIDEO
        if model.startswith("qwen-image"):
            return MULTIMODAL
        if "i2i" in model or "imageedit" in model:
            return IMAGE2IMAGE
        return TEXT2IMAGE

    @staticmethod
    def _body(job: ProviderJob, inputs: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
        for key, value in job.params.items():
            if key == "endpoint":
                continue
            if key.startswith("input."):
                inputs[key.removeprefix("input.")] = value
            else:
                parameters[key.removeprefix("parameters.")] = value
        return {"model": job.native_model_id, "input": inputs, "parameters": parameters}

    # ---------------------------------------------------------------- bodies

    def task_body(self, job: ProviderJob) -> dict[str, Any]:
        """The body of an asynchronous task (Wan images and videos)."""
        endpoint = self.endpoint(job)
        inputs: dict[str, Any] = {job.name("generation_prompt", "prompt"): job.prompt}
        negative = job.specific.get("generation_negative_prompt")
        if negative:
            inputs[job.name("generation_negative_prompt", "negative_prompt")] = negative
        parameters: dict[str, Any] = {}
        if job.seed is not None:
            parameters[job.name("generation_seed", "seed")] = job.seed
        if job.model_type == "video":
            self._video_fields(job, endpoint, inputs, parameters)
        else:
            table, area = _image_sizes(job.native_model_id)
            ratio = job.value("generation_ratio", job.ratio)
            parameters[job.name("generation_ratio", "size")] = table.get(
                str(ratio), _ratio_size(str(ratio), area) or ratio
            )
            parameters[job.name("generation_output_number", "n")] = job.output_number
            if job.inputs:
                inputs[job.name("generation_input_file", "images")] = [i.url for i in job.inputs]
        return self._body(job, inputs, parameters)

    def _video_fields(
        self, job: ProviderJob, endpoint: str, inputs: dict[str, Any], parameters: dict[str, Any]
    ) -> None:
        resolution = (job.resolution or "720p").lower()
        if endpoint == KEYFRAMES:
            if job.inputs:
                inputs[job.name("generation_input_file", "first_frame_url")] = job.inputs[0].url
            if job.last_frame is not None:
                inputs[job.name("generation_input_file_last_content", "last_frame_url")] = job.last_frame.url
        elif job.last_frame is not None:
            raise ProviderError(
                "bse_unsupported_parameter",
                f"{job.native_model_id} on {PROVIDER} takes no last frame (a kf2v model does).",
                retryable=False,
            )
        elif job.inputs:
            inputs[job.name("generation_input_file", "img_url")] = job.inputs[0].url
        if job.inputs or endpoint == KEYFRAMES:
            # The frame comes from the image: only the resolution tier is chosen.
            mapped = job.value("generation_resolution", resolution)
            parameters[job.name("generation_resolution", "resolution")] = (
                resolution.upper() if mapped == resolution else mapped
            )
        else:
            ratio = job.value("generation_ratio", job.ratio)
            tier = VIDEO_SIZES.get(resolution, {})
            parameters[job.name("generation_ratio", "size")] = tier.get(str(ratio), ratio)
        if job.duration is not None:
            job.put(parameters, "generation_duration", "duration", job.duration)
        if job.generate_audio is not None:
            job.put(parameters, "generation_generate_audio", "audio", job.generate_audio)

    def sync_body(self, job: ProviderJob, index: int = 0) -> dict[str, Any]:
        """The body of one synchronous Qwen-Image call (one image)."""
        content: list[dict[str, Any]] = [{"image": i.url} for i in job.inputs]
        content.append({"text": job.prompt})
        parameters: dict[str, Any] = {}
        if not job.inputs or "generation_ratio" in job.value_maps:
            # An edit keeps its input's frame unless the catalogue maps ratios for the model.
            ratio = job.value("generation_ratio", job.ratio)
            table, area = _image_sizes(job.native_model_id)
            parameters[job.name("generation_ratio", "size")] = table.get(
                str(ratio), _ratio_size(str(ratio), area) or ratio
            )
        negative = job.specific.get("generation_negative_prompt")
        if negative:
            parameters[job.name("generation_negative_prompt", "negative_prompt")] = negative
        if job.seed is not None:
            parameters[job.name("generation_seed", "seed")] = job.seed + index
        inputs: dict[str, Any] = {"messages": [{"role": "user", "content": content}]}
        return self._body(job, inputs, parameters)

    # ---------------------------------------------------------------- submit

    async def submit(self, job: ProviderJob) -> str:
        endpoint = self.endpoint(job)
        if endpoint == MULTIMODAL:
            batches = await asyncio.gather(
                *(self._sync_call(job, i) for i in range(max(1, job.output_number)))
            )
            result = ProviderResult(outputs=[o for batch in batches for o in batch])
            return self.held.hold(f"{SYNC_ID_PREFIX}{uuid.uuid4().hex}", result)
        answer = await self.http.json(
            "POST",
            SERVICES + endpoint,
            json=self.task_body(job),
            headers=ASYNC_HEADERS,
        )
        task_id = dig(answer, "output", "task_id")
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError("bse_provider_error", f"{PROVIDER} answered without a task id.", True)
        return task_id

    async def _sync_call(self, job: ProviderJob, index: int) -> list[ProviderOutput]:
        body = self.sync_body(job, index)
        answer = await self.http.json(
            "POST", SERVICES + MULTIMODAL, json=body
        )
        urls = [
            part["image"]
            for choice in dig(answer, "output", "choices") or []
            for part in dig(choice, "message", "content") or []
            if isinstance(part, dict) and isinstance(part.get("image"), str) and part["image"]
        ]
        if not urls:
            code = dig(answer, "code")
            if isinstance(code, str) and code:
                raise dashscope_error(code, str(dig(answer, "message") or ""))
            raise ProviderError("bse_provider_error", f"{PROVIDER} answered without an image.", True)
        return [_image_output(u) for u in urls]

    # ------------------------------------------------------------------ wait

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        if prediction_id.startswith(SYNC_ID_PREFIX):
            return self.held.take(prediction_id)
        answer = await self.http.poll_while(
            TASKS + prediction_id, lambda task: dig(task, "output", "task_status") in RUNNING
        )
        output = dig(answer, "output")
        status = dig(output, "task_status")
        if status == "SUCCEEDED":
            return ProviderResult(outputs=self._outputs(job, output), predict_time=_predict_time(output))
        if status == "FAILED":
            code, message = dig(output, "code"), dig(output, "message")
            raise dashscope_error(str(code or ""), str(message or "task failed"))
        if status == "CANCELED":
            raise canceled_upstream(PROVIDER, prediction_id)
        if status == "UNKNOWN":
            message = f"{PROVIDER} does not know task {prediction_id} (expired?)."
            raise ProviderError("bse_provider_error", message, True)
        raise ProviderError("bse_provider_error", f"{PROVIDER} reported status {status!r}.", True)

    def _outputs(self, job: ProviderJob, output: Any) -> list[ProviderOutput]:
        video = dig(output, "video_url")
        if isinstance(video, str) and video:
            return [ProviderOutput(ext="mp4", content_type="video/mp4", url=video)]
        outputs: list[ProviderOutput] = []
        for item in dig(output, "results") or []:
            if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"]:
                outputs.append(_image_output(item["url"]))
            elif isinstance(item, dict) and item.get("code"):
                # One refused image fails the generation: the client asked (and pays) for all.
                raise dashscope_error(str(item["code"]), str(item.get("message") or ""))
        if not outputs:
            raise ProviderError("bse_provider_error", f"{PROVIDER} succeeded without outputs.", True)
        return outputs

    # ---------------------------------------------------------------- cancel

    async def cancel(self, prediction_id: str) -> bool:
        if prediction_id.startswith(SYNC_ID_PREFIX):
            self.held.drop(prediction_id)
            return False  # the call already ran to its end; there is nothing upstream to stop
        # Refused once the task is no longer PENDING: running tasks cannot be stopped.
        return await self.http.accepted("POST", f"{TASKS}{prediction_id}/cancel")
