"""BytePlus ModelArk (the international Volcengine Ark API): Seedream images, Seedance videos.

Protocol facts this adapter relies on:

- One bearer key per region (``Authorization: Bearer <ARK key>``); the base URL names
  the region and every path sits under ``/api/v3``.
- Images (``POST /api/v3/images/generations``) are synchronous and OpenAI-shaped: the
  answer carries ``data[].url`` (valid about a day) or ``data[].b64_json``. ``size`` is
  either a preset ("2K") or "WxH" pixels, so a unified ratio becomes a pixel size. One
  call yields one image unless "sequential" (group) generation is switched on, where
  the *model* decides how many images a prompt deserves; a requested count is
  therefore made by that many concurrent calls. Nothing upstream outlives the call,
  so the result is held in memory between ``submit`` and ``wait`` (a restart submits
  again, which is cheap compared to guessing).
- Videos are tasks: ``POST /api/v3/contents/generations/tasks`` with ``content`` (a
  text item for the prompt, ``image_url`` items with a ``role`` of ``first_frame``,
  ``last_frame`` or ``reference_image``) and the generation settings as top-level
  fields (``ratio``, ``duration``, ``resolution``, ``seed``, ``generate_audio``,
  ``watermark``). The older "--rs 720p --dur 5" suffixes in the prompt text still
  work for 1.x models only, whereas the body fields work for every Seedance model.
  ``GET .../tasks/{id}`` moves ``queued`` -> ``running`` -> ``succeeded`` | ``failed``
  | ``cancelled`` (| ``expired`` when the task outlived its execution window), with
  ``content.video_url`` or ``error {code, message}``. ``DELETE .../tasks/{id}``
  cancels a *queued* task only; a running one cannot be stopped.
- Errors are ``{"error": {"code", "message", "type"}}``. The code matters more than
  the status: every moderation refusal is a 400 whose code contains
  ``SensitiveContentDetected``; an account in arrears is a 403
  (``AccountOverdueError``), exhausted trial or "safe experience" limits are 429s
  (``QuotaExceeded``, ``SetLimitExceeded``) that waiting does not cure.
- Input images may be sent inline as data URIs, which spares the provider a second
  download of a URL that may expire or block its crawler; very large ones go by URL.
"""

from __future__ import annotations

import asyncio
import uuid
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
from genplane.providers.error_codes import CodeMeanings, coded_error, meaning_by_prefix
from genplane.providers.http import HeldResults, ProviderHttp, dig, json_body, key_headers
from genplane.providers.outputs import canceled_upstream, decode_base64
from genplane.settings import Settings

PROVIDER = "byteplus"
IMAGES_PATH = "/api/v3/images/generations"
TASKS_PATH = "/api/v3/contents/generations/tasks"
IMAGE_ID_PREFIX = "seedream-"  # ids of synchronous image calls; task ids come from Ark ("cgt-...")

# Seedream 4.x sizes for each ratio at its 2K tier (the provider's recommended table).
SEEDREAM_SIZES = {
    "1:1": "2048x2048",
    "4:3": "2304x1728",
    "3:4": "1728x2304",
    "16:9": "2560x1440",
    "9:16": "1440x2560",
    "3:2": "2496x1664",
    "2:3": "1664x2496",
    "21:9": "3024x1296",
}
INLINE_IMAGE_MAX_BYTES = 7 * 1024 * 1024  # base64 of this stays under Ark's 10 MB per image

RUNNING = frozenset({"queued", "running"})
ARK_CODES: CodeMeanings = (
    ("bse_provider_credits_exhausted", ("AccountOverdueError", "QuotaExceeded", "SetLimitExceeded")),
    ("bse_provider_unavailable", ("ModelNotOpen", "InvalidEndpoint", "AccessDenied", "AuthenticationError")),
    ("bse_invalid_input", ("InvalidParameter", "MissingParameter", "InvalidArgument")),
)


def ark_error(code: str, message: str, fallback: ProviderError | None = None) -> ProviderError:
    """The contract error for an Ark error code (from an HTTP answer or a failed task)."""
    # Moderation codes start with what was refused ("InputImageSensitiveContentDetected").
    policy = "SensitiveContent" in code
    meaning = "bse_content_policy_violation" if policy else meaning_by_prefix(code, ARK_CODES)
    return coded_error(meaning, f"{PROVIDER}: {code or 'error'}: {message}".strip(), fallback)


def _refine(response: httpx.Response, shared: ProviderError) -> ProviderError:
    err = json_body(response).get("error")
    if not isinstance(err, dict):
        return shared
    return ark_error(str(err.get("code") or ""), str(err.get("message") or ""), fallback=shared)



def _image_ext(data: bytes) -> tuple[str, str]:
    if data.startswith(b"\x89PNG"):
        return "png", "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return "jpg", "image/jpeg"


def _url_ext(url: str, default: tuple[str, str]) -> tuple[str, str]:
    path = urlsplit(url).path.lower()
    if path.endswith(".png"):
        return "png", "image/png"
    if path.endswith(".webp"):
        return "webp", "image/webp"
    if path.endswith((".jpg", ".jpeg")):
        return "jpg", "image/jpeg"
    return default


def _image_ref(image: InputImage) -> str:
    return image.data_uri if len(image.data) <= INLINE_IMAGE_MAX_BYTES else image.url


class BytePlusAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_key = settings.byteplus_api_key is not None
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.byteplus_base_url, _refine,
            headers=key_headers(settings.byteplus_api_key),
        )
        self.held = HeldResults(PROVIDER)

    def configured(self) -> bool:
        return self._has_key and bool(self.http.base_url)

    # ------------------------------------------------------------------ submit

    async def submit(self, job: ProviderJob) -> str:
        if job.model_type == "video":
            answer = await self.http.json(
                "POST", TASKS_PATH, json=self.video_body(job)
            )
            task_id = dig(answer, "id")
            if not isinstance(task_id, str) or not task_id:
                raise ProviderError("bse_provider_error", f"{PROVIDER} answered without a task id.", True)
            return task_id
        outputs = await asyncio.gather(*(self._one_image(job, i) for i in range(max(1, job.output_number))))
        result = ProviderResult(outputs=[o for batch in outputs for o in batch])
        return self.held.hold(f"{IMAGE_ID_PREFIX}{uuid.uuid4().hex}", result)

    def image_body(self, job: ProviderJob, index: int = 0) -> dict[str, Any]:
        ratio = job.value("generation_ratio", job.ratio)
        body: dict[str, Any] = {
            "model": job.native_model_id,
            job.name("generation_prompt", "prompt"): job.prompt,
            job.name("generation_ratio", "size"): SEEDREAM_SIZES.get(str(ratio), ratio),
            "response_format": "url",
            "watermark": False,
        }
        if job.seed is not None:
            body[job.name("generation_seed", "seed")] = job.seed + index
        if job.inputs:
            refs = [_image_ref(i) for i in job.inputs]
            body[job.name("generation_input_file", "image")] = refs[0] if len(refs) == 1 else refs
        # Seedream has no negative prompt and a model-fixed format: sent only where the
        # catalogue names the model's parameter for them.
        negative = job.specific.get("generation_negative_prompt")
        if negative and "generation_negative_prompt" in job.field_names:
            body[job.field_names["generation_negative_prompt"]] = negative
        if "generation_output_format" in job.field_names:
            job.put(body, "generation_output_format", "", job.output_format)
        body.update(job.params)
        return body

    async def _one_image(self, job: ProviderJob, index: int) -> list[ProviderOutput]:
        answer = await self.http.json(
            "POST", IMAGES_PATH, json=self.image_body(job, index)
        )
        items = dig(answer, "data")
        if not isinstance(items, list):
            err = dig(answer, "error")
            if isinstance(err, dict):
                raise ark_error(str(err.get("code") or ""), str(err.get("message") or ""))
            raise ProviderError("bse_provider_error", f"{PROVIDER} answered without images.", True)
        outputs: list[ProviderOutput] = []
        failure: ProviderError | None = None
        for item in items:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("url"), str) and item["url"]:
                ext, ctype = _url_ext(item["url"], ("jpg", "image/jpeg"))
                outputs.append(ProviderOutput(ext=ext, content_type=ctype, url=item["url"]))
            elif isinstance(item.get("b64_json"), str) and item["b64_json"]:
                data = decode_base64(PROVIDER, item["b64_json"])
                ext, ctype = _image_ext(data)
                outputs.append(ProviderOutput(ext=ext, content_type=ctype, data=data))
            elif isinstance(item.get("error"), dict):
                failure = failure or ark_error(
                    str(item["error"].get("code") or ""), str(item["error"].get("message") or "")
                )
        if not outputs:
            raise failure or ProviderError("bse_provider_error", f"{PROVIDER} answered without images.", True)
        return outputs

    def video_body(self, job: ProviderJob) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": job.prompt}]
        # One image (or one with a last frame) is the first frame; several are references.
        frames = len(job.inputs) == 1 or job.last_frame is not None
        for i, image in enumerate(job.inputs):
            role = "first_frame" if frames and i == 0 else "reference_image"
            content.append({"type": "image_url", "image_url": {"url": _image_ref(image)}, "role": role})
        if job.last_frame is not None:
            content.append(
                {"type": "image_url", "image_url": {"url": _image_ref(job.last_frame)}, "role": "last_frame"}
            )
        body: dict[str, Any] = {
            "model": job.native_model_id,
            "content": content,
            job.name("generation_ratio", "ratio"): job.value("generation_ratio", job.ratio),
            "watermark": False,
        }
        if job.duration is not None:
            job.put(body, "generation_duration", "duration", job.duration)
        if job.resolution:
            job.put(body, "generation_resolution", "resolution", job.resolution)
        if job.generate_audio is not None:
            job.put(body, "generation_generate_audio", "generate_audio", job.generate_audio)
        if job.seed is not None:
            body[job.name("generation_seed", "seed")] = job.seed
        body.update(job.params)
        return body

    # -------------------------------------------------------------------- wait

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        if prediction_id.startswith(IMAGE_ID_PREFIX):
            return self.held.take(prediction_id)
        path = f"{TASKS_PATH}/{prediction_id}"
        task = await self.http.poll_while(path, lambda answer: dig(answer, "status") in RUNNING)
        status = dig(task, "status")
        if status == "succeeded":
            url = dig(task, "content", "video_url")
            if not isinstance(url, str) or not url:
                raise ProviderError("bse_provider_error", f"{PROVIDER} succeeded without a video.", True)
            output = ProviderOutput(ext="mp4", content_type="video/mp4", url=url)
            return ProviderResult(outputs=[output], predict_time=_elapsed(task))
        if status == "failed":
            error = dig(task, "error")
            raise ark_error(str(dig(error, "code") or ""), str(dig(error, "message") or "task failed"))
        if status == "cancelled":
            raise canceled_upstream(PROVIDER, prediction_id)
        if status == "expired":
            message = f"{PROVIDER} task {prediction_id} expired before it ran."
            raise ProviderError("bse_provider_timeout", message, True)
        raise ProviderError("bse_provider_error", f"{PROVIDER} reported status {status!r}.", True)

    # ------------------------------------------------------------------ cancel

    async def cancel(self, prediction_id: str) -> bool:
        if prediction_id.startswith(IMAGE_ID_PREFIX):
            self.held.drop(prediction_id)
            return False  # the call already ran to its end; there is nothing upstream to stop
        # Refused for a running task: Ark cancels queued ones only.
        return await self.http.accepted("DELETE", f"{TASKS_PATH}/{prediction_id}")


def _elapsed(task: Any) -> float | None:
    created, updated = dig(task, "created_at"), dig(task, "updated_at")
    if isinstance(created, int | float) and isinstance(updated, int | float) and updated >= created:
        return float(updated - created)
    return None
