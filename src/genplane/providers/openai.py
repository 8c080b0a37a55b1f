"""OpenAI adapter: the Images API for image models, the Videos API (Sora) for video models.

Protocol facts this relies on:

- Every call carries ``Authorization: Bearer <key>``; failures answer
  ``{"error": {"message", "type", "param", "code"}}``. The ``code`` is what tells a safety
  refusal (``moderation_blocked`` on GPT Image, ``content_policy_violation`` on DALL-E)
  or an empty account (``insufficient_quota``, sent as a 429 that no wait will cure)
  from an ordinary rate limit, so error bodies are read here rather than mapped by
  status alone.
- Images are synchronous: ``POST /v1/images/generations`` (JSON) or, with input images,
  ``POST /v1/images/edits`` (multipart, one ``image[]`` part per image) answers with the
  finished pictures, so ``submit`` does the whole call and holds the result for ``wait``.
  GPT Image answers ``data[].b64_json``; DALL-E is asked for base64 too instead of
  its one-hour URLs. Sizes are a short fixed list per model, so the unified ratio is
  mapped to the nearest one. DALL-E 3 makes one image per call (``n`` must be 1).
- Videos are jobs: ``POST /v1/videos`` (``seconds`` is a string, ``size`` a fixed list;
  an ``input_reference`` image is a multipart file that must have exactly the
  requested size, so it is fitted first), polled at ``GET /v1/videos/{id}`` through
  ``queued`` / ``in_progress`` to ``completed`` or ``failed`` (with ``error.code``), and
  the MP4 is fetched from ``GET /v1/videos/{id}/content``, which needs the key, so its
  bytes are returned rather than a URL.
- The Videos API has no cancel: ``DELETE /v1/videos/{id}`` removes a completed or failed
  video. ``cancel`` sends it anyway (so an abandoned result is not kept) and reports
  whether it was accepted; a job still running is refused and runs to its end.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any

import httpx

from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.forms import form_fields
from genplane.providers.http import HeldResults, ProviderHttp, dig, json_body, key_headers
from genplane.providers.openai_images import images_answer
from genplane.providers.outputs import decode_base64
from genplane.providers.sizes import nearest_shape
from genplane.providers.synchronous import all_or_first_failure, whole_generation_timeout
from genplane.settings import Settings

PROVIDER = "openai"
IMAGE_PREFIX = "openai-images-"

Sizes = tuple[tuple[int, int], ...]
_GPT_IMAGE_SIZES: Sizes = ((1024, 1024), (1536, 1024), (1024, 1536))
_DALLE3_SIZES: Sizes = ((1024, 1024), (1792, 1024), (1024, 1792))
_DALLE2_SIZES: Sizes = ((1024, 1024),)
_VIDEO_SIZES: dict[str, Sizes] = {
    "720p": ((1280, 720), (720, 1280)),
    "1024p": ((1792, 1024), (1024, 1792)),
    "1080p": ((1792, 1024), (1024, 1792)),
}
_VIDEO_SECONDS = (4, 8, 12)

_NATIVE_FORMATS = {"jpg": "jpeg"}
_MEDIA = {"png": ("png", "image/png"), "jpg": ("jpg", "image/jpeg"), "webp": ("webp", "image/webp")}

_POLICY_CODES = {"moderation_blocked", "content_policy_violation", "image_content_policy_violation"}
_QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"}


def nearest_size(ratio: str, sizes: Sizes) -> str:
    """The size string from ``sizes`` whose shape is closest to ``"W:H"``."""
    width, height = nearest_shape(ratio, sizes)
    return f"{width}x{height}"


def sniff_image(data: bytes, fallback: str) -> tuple[str, str]:
    """Extension and content type from an image's first bytes."""
    if data.startswith(b"\x89PNG"):
        return _MEDIA["png"]
    if data.startswith(b"\xff\xd8"):
        return _MEDIA["jpg"]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _MEDIA["webp"]
    return _MEDIA.get(fallback, (fallback, "application/octet-stream"))


def fit_image(data: bytes, width: int, height: int) -> tuple[bytes, str]:
    """The image scaled and centre-cropped to exactly ``width`` x ``height`` (PNG), unless it fits."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        if image.size == (width, height):
            return data, Image.MIME.get(image.format or "", "image/png")
        fitted = ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    fitted.save(out, "PNG")
    return out.getvalue(), "image/png"


def refine_error(response: httpx.Response, shared: ProviderError) -> ProviderError:
    """A failed answer, read for OpenAI's error code before falling back to its status."""
    body = json_body(response)
    code = str(dig(body, "error", "code") or "")
    kind = str(dig(body, "error", "type") or "")
    message = str(dig(body, "error", "message") or "")[:300]
    if code in _POLICY_CODES:
        return ProviderError(
            "bse_content_policy_violation",
            f"openai refused the request under its content policy: {message}",
            retryable=False,
        )
    if code in _QUOTA_CODES or kind == "insufficient_quota":
        return ProviderError(
            "bse_provider_credits_exhausted",
            "openai: the account is out of credits or over its billing limit.",
            retryable=False,
        )
    return shared


class OpenAIAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_key = settings.openai_api_key is not None
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.openai_base_url, refine_error,
            headers=key_headers(settings.openai_api_key),
        )
        self.image_timeout = whole_generation_timeout(settings)
        self.max_output_bytes = settings.max_output_file_bytes
        self.held = HeldResults(PROVIDER)

    def configured(self) -> bool:
        return self._has_key and bool(self.http.base_url)

    async def submit(self, job: ProviderJob) -> str:
        if job.model_type == "video":
            return await self._submit_video(job)
        result = await self._generate_images(job)
        return self.held.hold(f"{IMAGE_PREFIX}{uuid.uuid4().hex}", result)

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        if prediction_id.startswith(IMAGE_PREFIX):
            return self.held.take(prediction_id)
        return await self._wait_video(prediction_id)

    async def cancel(self, prediction_id: str) -> bool:
        if prediction_id.startswith(IMAGE_PREFIX):
            self.held.drop(prediction_id)  # the picture is made and paid for; only forget it
            return False
        try:
            answer = await self.http.send(
                "DELETE", f"/v1/videos/{prediction_id}"
            )
        except ProviderError:
            return False
        return bool(dig(self.http.decode(answer), "deleted"))

    # -- images ---------------------------------------------------------------------

    def image_fields(self, job: ProviderJob, n: int) -> dict[str, Any]:
        model = job.native_model_id
        dalle = model.startswith("dall-e")
        sizes = _GPT_IMAGE_SIZES
        if dalle:
            sizes = _DALLE3_SIZES if model.startswith("dall-e-3") else _DALLE2_SIZES
        ratio = job.value("generation_ratio", job.ratio)
        size = ratio if isinstance(ratio, str) and ":" not in ratio else nearest_size(str(ratio), sizes)
        fields: dict[str, Any] = {"model": model, "prompt": job.prompt}
        fields[job.name("generation_output_number", "n")] = n
        fields[job.name("generation_ratio", "size")] = size
        if dalle:
            fields["response_format"] = "b64_json"  # bytes now, not a URL that lapses in an hour
        else:
            fields[job.name("generation_output_format", "output_format")] = job.translated(
                "generation_output_format", job.output_format, _NATIVE_FORMATS
            )
        for unified in ("generation_negative_prompt", "generation_seed"):
            native = job.field_names.get(unified)  # neither exists natively; only if the catalogue says
            if native and job.specific.get(unified) is not None:
                fields[native] = job.specific[unified]
        fields.update(job.params)
        return fields

    async def _generate_images(self, job: ProviderJob) -> ProviderResult:
        per_call = 1 if job.native_model_id.startswith("dall-e-3") else 10
        number = max(1, job.output_number)
        counts = [min(per_call, number - i) for i in range(0, number, per_call)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        batches = await all_or_first_failure(self._image_call(job, n) for n in counts)
        outputs = [output for batch in batches for output in batch]
        return ProviderResult(outputs=outputs, predict_time=round(loop.time() - started, 3))

    async def _image_call(self, job: ProviderJob, n: int) -> list[ProviderOutput]:
        answer = await images_answer(self.http, job, self.image_fields(job, n), self.image_timeout)
        return self._image_outputs(job, answer)

    @staticmethod
    def _image_outputs(job: ProviderJob, answer: Any) -> list[ProviderOutput]:
        items = dig(answer, "data")
        if not isinstance(items, list) or not items:
            raise ProviderError("bse_provider_error", "openai answered without images.", True)
        outputs = []
        for item in items:
            encoded, url = dig(item, "b64_json"), dig(item, "url")
            if isinstance(encoded, str):
                data = decode_base64(PROVIDER, encoded)
                ext, content_type = sniff_image(data, job.output_format)
                outputs.append(ProviderOutput(ext=ext, content_type=content_type, data=data))
            elif isinstance(url, str):
                ext, content_type = _MEDIA.get(job.output_format, _MEDIA["png"])
                outputs.append(ProviderOutput(ext=ext, content_type=content_type, url=url))
            else:
                raise ProviderError("bse_provider_error", "openai sent an image without data.", True)
        return outputs

    # -- video ----------------------------------------------------------------------

    @staticmethod
    def video_size(job: ProviderJob) -> str:
        resolution = str(job.value("generation_resolution", job.resolution or "720p"))
        ratio = job.value("generation_ratio", job.ratio)
        if isinstance(ratio, str) and "x" in ratio:
            return ratio
        return nearest_size(str(ratio), _VIDEO_SIZES.get(resolution, _VIDEO_SIZES["720p"]))

    def video_fields(self, job: ProviderJob) -> dict[str, Any]:
        size = self.video_size(job)
        duration = job.duration or 4
        if "generation_duration" in job.value_maps:
            seconds = job.value("generation_duration", duration)
        else:
            seconds = min(_VIDEO_SECONDS, key=lambda s: (abs(s - duration), s))
        fields: dict[str, Any] = {"model": job.native_model_id, "prompt": job.prompt}
        fields[job.name("generation_ratio", "size")] = size
        fields[job.name("generation_duration", "seconds")] = str(seconds)
        fields.update(job.params)
        return fields

    async def _submit_video(self, job: ProviderJob) -> str:
        fields = self.video_fields(job)
        if job.inputs:
            width, height = (int(v) for v in self.video_size(job).lower().split("x"))
            try:
                data, content_type = await asyncio.to_thread(fit_image, job.inputs[0].data, width, height)
            except (OSError, ValueError) as exc:
                message = "The input image could not be decoded."
                raise ProviderError("bse_file_load_error", message, False) from exc
            reference = ("input_reference", (f"reference.{_extension(content_type)}", data, content_type))
            response = await self.http.send("POST", "/v1/videos", data=form_fields(fields), files=[reference])
        else:
            response = await self.http.send(
                "POST", "/v1/videos", json=fields
            )
        video_id = dig(self.http.decode(response), "id")
        if not isinstance(video_id, str) or not video_id or video_id.startswith(IMAGE_PREFIX):
            raise ProviderError("bse_provider_error", "openai answered without a video id.", True)
        return video_id

    async def _wait_video(self, video_id: str) -> ProviderResult:
        video = await self.http.poll_while(f"/v1/videos/{video_id}", _video_pending)
        status = dig(video, "status")
        if status == "failed":
            raise _video_failure(video_id, video)
        if status != "completed":
            raise ProviderError("bse_provider_error", "openai sent a video without a status.", True)
        data = await self._download(video_id)
        created, completed = dig(video, "created_at"), dig(video, "completed_at")
        predict_time = (
            float(completed - created)
            if isinstance(created, int | float) and isinstance(completed, int | float)
            else None
        )
        output = ProviderOutput(ext="mp4", content_type="video/mp4", data=data)
        return ProviderResult(outputs=[output], predict_time=predict_time)

    async def _download(self, video_id: str) -> bytes:
        """The finished MP4; a flaky fetch is tried again, since the video is already paid for."""
        for attempt in range(3):
            try:
                response = await self.http.send(
                    "GET",
                    f"/v1/videos/{video_id}/content",
                    headers={"Accept": "application/binary"},
                )
            except ProviderError as exc:
                transient = exc.http_status is None or exc.http_status >= 500 or exc.http_status == 429
                if not transient or attempt == 2:
                    raise
                await asyncio.sleep(min(exc.retry_after or self.http.poll_interval * (attempt + 1), 10.0))
                continue
            if len(response.content) > self.max_output_bytes:
                raise ProviderError("bse_provider_error", "openai sent a video over the size limit.", False)
            if not response.content:
                raise ProviderError("bse_provider_error", "openai sent an empty video.", True)
            return response.content
        raise AssertionError("unreachable")


def _video_pending(video: Any) -> bool:
    """queued, in_progress, or a state this adapter does not know yet: polled again."""
    status = dig(video, "status")
    return isinstance(status, str) and status not in ("completed", "failed")


def _video_failure(video_id: str, video: Any) -> ProviderError:
    code = str(dig(video, "error", "code") or "")
    message = str(dig(video, "error", "message") or "no details")[:300]
    text = f"{code} {message}".lower()
    if code in _POLICY_CODES or any(word in text for word in ("moderation", "policy", "safety")):
        return ProviderError(
            "bse_content_policy_violation",
            f"openai refused video {video_id}: {message}",
            retryable=False,
        )
    if code in _QUOTA_CODES:
        return ProviderError(
            "bse_provider_credits_exhausted", "openai: the account is out of credits.", retryable=False
        )
    return ProviderError("bse_provider_error", f"openai video {video_id} failed: {code or message}", True)


def _extension(content_type: str) -> str:
    return {"image/jpeg": "jpg", "image/webp": "webp"}.get(content_type, "png")
