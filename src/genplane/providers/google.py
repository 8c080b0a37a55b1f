"""Google Gemini API: Imagen, Gemini image models ("nano banana") and Veo, one key for all.

Protocol facts this adapter relies on:

- Every call carries ``x-goog-api-key``. Failures answer ``{"error": {"code", "message",
  "status", "details"}}``; the status code alone misleads: a wrong key is a 400
  ``INVALID_ARGUMENT`` (``ErrorInfo.reason`` ``API_KEY_INVALID``), models that need a paid
  account refuse free keys with a 400 about "billed users", and a 429
  ``RESOURCE_EXHAUSTED`` says how long to wait in a ``RetryInfo.retryDelay`` detail rather
  than a Retry-After header. So error bodies are read here.
- Three protocols behind one host, chosen by the model id (``imagen-*``, ``veo-*``,
  otherwise Gemini) or the catalogue's ``params.api``:
  ``models/{m}:predict`` (Imagen) answers at once with ``predictions[].bytesBase64Encoded``;
  a refused prompt yields no prediction at all, or, since ``includeRaiReason`` is asked
  for, predictions carrying only a ``raiFilteredReason``. It makes up to 4 images a call.
  ``models/{m}:generateContent`` answers at once with ``candidates[].content.parts[]``
  whose ``inlineData`` holds the picture (parts marked ``thought`` are drafts); refusals
  show as ``promptFeedback.blockReason`` or a safety ``finishReason``. One picture per
  call, so several outputs are several calls.
  ``models/{m}:predictLongRunning`` (Veo) answers an operation name polled at
  ``GET /v1beta/{name}`` until ``done``; the result holds
  ``response.generateVideoResponse.generatedSamples[].video.uri`` or, when filtered,
  ``raiMediaFilteredReasons``, or the operation carries an ``error``.
- The video URI needs the key. It is fetched here (and only from the API's own host, so
  the key never goes elsewhere); a redirect to storage is handed to the worker as a URL.
- The Gemini API has no cancel for these operations (only ``get``), so ``cancel`` sends
  nothing and says so. Imagen and Gemini calls are synchronous and cannot be stopped.
- Seeds and negative prompts are refused by the Gemini API for Imagen, and seeds and
  ``generateAudio`` for Veo on some model versions, so those are sent only when the
  catalogue names the parameter (``fields``); Gemini image models take ``seed`` natively.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import re
import uuid
from typing import Any
from urllib.parse import quote

import httpx

from genplane.providers.base import InputImage, ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.http import HeldResults, ProviderHttp, dig, json_body, key_headers
from genplane.providers.outputs import CONTENT_TYPES, canceled_upstream, decode_base64, ext_for, image_output
from genplane.providers.synchronous import all_or_first_failure, whole_generation_timeout
from genplane.settings import Settings

PROVIDER = "google"
SYNC_PREFIX = "google-sync-"
PREDICT, GENERATE_CONTENT, LONG_RUNNING = "predict", "generateContent", "predictLongRunning"
IMAGEN_PER_CALL = 4
# Keys of ``params`` that belong at the top of a generateContent body, not in generationConfig.
_TOP_LEVEL = frozenset({"safetySettings", "systemInstruction", "tools", "toolConfig"})
_POLICY_FINISH = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
_POLICY_WORDS = ("safety", "responsible ai", "usage guidelines", "violate", "prohibited", "harmful")
_IMAGEN_MIME = {"png": "image/png", "jpg": "image/jpeg"}  # Imagen writes no WebP: converted here
_OPERATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+$")
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def protocol(job: ProviderJob) -> str:
    """The API a model speaks: the catalogue's ``params.api``, else by its id."""
    chosen = job.params.get("api")
    if chosen in (PREDICT, GENERATE_CONTENT, LONG_RUNNING):
        return str(chosen)
    if chosen is not None:
        raise ProviderError("bse_model_not_configured", f"Unknown Gemini API method {chosen!r}.", False)
    model = model_name(job)
    if model.startswith("imagen-"):
        return PREDICT
    if model.startswith("veo-"):
        return LONG_RUNNING
    return GENERATE_CONTENT


def model_name(job: ProviderJob) -> str:
    return job.native_model_id.strip().removeprefix("models/")


def put(target: dict[str, Any], name: str, value: Any) -> None:
    """Set ``value`` at a dotted ``name`` (``imageConfig.aspectRatio``); "" or None sends nothing."""
    if not name or value is None:
        return
    *parents, last = name.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value


def put_field(target: dict[str, Any], job: ProviderJob, unified: str, default: str, value: Any) -> None:
    """Set a unified field's value, translated for the model, at its native (dotted) name."""
    if value is not None:
        put(target, job.name(unified, default), job.value(unified, value))


def merge(target: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge the catalogue's fixed params into a native object."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _blob(image: InputImage) -> dict[str, str]:
    return {"bytesBase64Encoded": base64.b64encode(image.data).decode(), "mimeType": image.content_type}


def _policy(message: str) -> ProviderError:
    return ProviderError(
        "bse_content_policy_violation", f"{PROVIDER} refused the content: {message}"[:400], retryable=False
    )


def _looks_like_policy(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in _POLICY_WORDS)


def refine_error(response: httpx.Response, shared: ProviderError) -> ProviderError:
    """A failed answer, read for Google's status and details before falling back to its code."""
    error = json_body(response).get("error")
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or "")[:300]
    status = str(error.get("status") or "")
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = {str(d.get("reason") or "") for d in details}
    if any(r.startswith("API_KEY") for r in reasons) or status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return ProviderError(
            "bse_provider_unavailable", f"{PROVIDER} refused the API key ({status or 'no status'}).", True
        )
    lowered = message.lower()
    # A 429 says "check your plan and billing details" too: that one is only a rate limit.
    if response.status_code != 429 and ("billed users" in lowered or "billing" in lowered):
        return ProviderError(
            "bse_provider_credits_exhausted", f"{PROVIDER}: the account cannot pay for this: {message}", False
        )
    if status == "FAILED_PRECONDITION":  # e.g. the API is not offered in the server's region
        return ProviderError("bse_provider_unavailable", f"{PROVIDER} cannot serve this: {message}", True)
    if response.status_code == 400 and _looks_like_policy(message):
        return _policy(message)
    if response.status_code == 429 and shared.retry_after is None:
        for detail in details:
            delay = _DELAY.match(str(detail.get("retryDelay") or ""))
            if delay:
                shared.retry_after = float(delay.group(1))
    return shared


class GoogleAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_key = settings.google_api_key is not None
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.google_base_url, refine_error,
            headers=key_headers(settings.google_api_key, "x-goog-api-key", scheme=""),
        )
        self.api_host = httpx.URL(self.http.base_url).host if self.http.base_url else ""
        self.image_timeout = whole_generation_timeout(settings)
        self.max_output_bytes = settings.max_output_file_bytes
        self.held = HeldResults(PROVIDER)

    def configured(self) -> bool:
        return self._has_key and bool(self.http.base_url)

    def _path(self, job: ProviderJob, method: str) -> str:
        return f"/v1beta/models/{quote(model_name(job), safe='')}:{method}"

    async def submit(self, job: ProviderJob) -> str:
        api = protocol(job)
        if api == LONG_RUNNING:
            return await self._start_video(job)
        started = asyncio.get_running_loop().time()
        if api == PREDICT:
            number = max(1, job.output_number)
            counts = [min(IMAGEN_PER_CALL, number - i) for i in range(0, number, IMAGEN_PER_CALL)]
            calls = [self._imagen(job, n) for n in counts]
        else:
            calls = [self._gemini(job, i) for i in range(max(1, job.output_number))]
        outputs = [output for batch in await all_or_first_failure(calls) for output in batch]
        took = round(asyncio.get_running_loop().time() - started, 3)
        result = ProviderResult(outputs=outputs, predict_time=took)
        return self.held.hold(f"{SYNC_PREFIX}{uuid.uuid4().hex}", result)

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        if prediction_id.startswith(SYNC_PREFIX):
            return self.held.take(prediction_id)
        return await self._wait_video(job, prediction_id)

    async def cancel(self, prediction_id: str) -> bool:
        # The Gemini API offers no cancel for generation operations; a synchronous image
        # is already made and paid for. Only forget a held result.
        if prediction_id.startswith(SYNC_PREFIX):
            self.held.drop(prediction_id)
        return False

    # -- Imagen (predict) ----------------------------------------------------------------

    def imagen_body(self, job: ProviderJob, count: int) -> dict[str, Any]:
        if job.inputs:
            raise ProviderError(
                "bse_unsupported_parameter", "Imagen on the Gemini API takes no input images.", False
            )
        parameters: dict[str, Any] = {"includeRaiReason": True}
        put(parameters, job.name("generation_output_number", "sampleCount"), count)
        put_field(parameters, job, "generation_ratio", "aspectRatio", job.ratio)
        if "generation_output_format" in job.value_maps:
            mime = job.value("generation_output_format", job.output_format)
        else:
            mime = _IMAGEN_MIME.get(job.output_format)  # WebP is not offered: converted on arrival
        put(parameters, job.name("generation_output_format", "outputOptions.mimeType"), mime)
        put_field(parameters, job, "generation_resolution", "sampleImageSize", job.resolution or None)
        self._named_only(job, parameters, "generation_negative_prompt")
        self._named_only(job, parameters, "generation_seed")
        merge(parameters, {k: v for k, v in job.params.items() if k != "api"})
        return {"instances": [{"prompt": job.prompt}], "parameters": parameters}

    @staticmethod
    def _named_only(job: ProviderJob, target: dict[str, Any], unified: str, value: Any = None) -> None:
        """A field the API may refuse: sent only under a name the catalogue gives it."""
        native = job.field_names.get(unified)
        value = job.specific.get(unified) if value is None else value
        if native and value is not None:
            put(target, native, job.value(unified, value))

    async def _imagen(self, job: ProviderJob, count: int) -> list[ProviderOutput]:
        answer = await self.http.json(
            "POST",
            self._path(job, PREDICT),
            json=self.imagen_body(job, count),
            request_timeout=self.image_timeout,
        )
        predictions = dig(answer, "predictions")
        predictions = predictions if isinstance(predictions, list) else []
        images: list[bytes] = []
        reasons: list[str] = []
        for prediction in predictions:
            encoded = dig(prediction, "bytesBase64Encoded")
            if isinstance(encoded, str) and encoded:
                images.append(decode_base64(PROVIDER, encoded))
            elif dig(prediction, "raiFilteredReason"):
                reasons.append(str(dig(prediction, "raiFilteredReason"))[:200])
        if not images:
            raise _policy(
                "; ".join(reasons) or "Imagen returned no image (its safety filters blocked the prompt)."
            )
        return [image_output(PROVIDER, data) for data in images]

    # -- Gemini image models (generateContent) ---------------------------------------------

    def gemini_body(self, job: ProviderJob, index: int = 0) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": job.prompt}]
        for image in job.inputs:
            data = base64.b64encode(image.data).decode()
            parts.append({"inlineData": {"mimeType": image.content_type, "data": data}})
        config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
        put_field(config, job, "generation_ratio", "imageConfig.aspectRatio", job.ratio)
        put_field(config, job, "generation_resolution", "imageConfig.imageSize", job.resolution or None)
        if job.seed is not None:
            put(config, job.name("generation_seed", "seed"), (job.seed + index) % 2**31)
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}
        params = {k: v for k, v in job.params.items() if k != "api"}
        merge(body, {k: v for k, v in params.items() if k in _TOP_LEVEL})
        merge(config, {k: v for k, v in params.items() if k not in _TOP_LEVEL})
        return body

    async def _gemini(self, job: ProviderJob, index: int) -> list[ProviderOutput]:
        answer = await self.http.json(
            "POST",
            self._path(job, GENERATE_CONTENT),
            json=self.gemini_body(job, index),
            request_timeout=self.image_timeout,
        )
        blocked = dig(answer, "promptFeedback", "blockReason")
        if blocked:
            raise _policy(f"the prompt was blocked ({blocked}).")
        candidates = dig(answer, "candidates")
        candidates = candidates if isinstance(candidates, list) else []
        images: list[bytes] = []
        texts: list[str] = []
        finishes: list[str] = []
        for candidate in candidates:
            finishes.append(str(dig(candidate, "finishReason") or ""))
            parts = dig(candidate, "content", "parts")
            for part in parts if isinstance(parts, list) else []:
                if dig(part, "thought"):
                    continue  # an interim draft of a thinking model, not the answer
                inline = dig(part, "inlineData") or dig(part, "inline_data")
                data = dig(inline, "data")
                if isinstance(data, str) and data:
                    images.append(decode_base64(PROVIDER, data))
                elif isinstance(dig(part, "text"), str):
                    texts.append(str(dig(part, "text")))
        if images:
            return [
                image_output(PROVIDER, data) for data in images
            ]
        refused = [f for f in finishes if f in _POLICY_FINISH]
        if refused:
            raise _policy(f"the image was withheld ({refused[0]}).")
        said = " ".join(texts).replace("\n", " ").strip()[:200]
        reason = ",".join(f for f in finishes if f) or "no candidates"
        raise ProviderError(
            "bse_provider_error",
            f"{PROVIDER} answered without an image ({reason}): {said or 'no text'}",
            True,
        )

    # -- Veo (predictLongRunning) ----------------------------------------------------------

    def veo_body(self, job: ProviderJob) -> dict[str, Any]:
        instance: dict[str, Any] = {"prompt": job.prompt}
        if job.inputs:
            put(instance, job.name("generation_input_file", "image"), _blob(job.inputs[0]))
        if job.last_frame is not None:
            put(instance, job.name("generation_input_file_last_content", "lastFrame"), _blob(job.last_frame))
        parameters: dict[str, Any] = {}
        put_field(parameters, job, "generation_ratio", "aspectRatio", job.ratio)
        put_field(parameters, job, "generation_duration", "durationSeconds", job.duration)
        put_field(parameters, job, "generation_resolution", "resolution", job.resolution or None)
        negative = job.specific.get("generation_negative_prompt")
        put(parameters, job.name("generation_negative_prompt", "negativePrompt"), negative)
        if job.output_number > 1:
            put(parameters, job.name("generation_output_number", "sampleCount"), job.output_number)
        self._named_only(job, parameters, "generation_seed")
        self._named_only(job, parameters, "generation_generate_audio", job.generate_audio)
        merge(parameters, {k: v for k, v in job.params.items() if k != "api"})
        return {"instances": [instance], "parameters": parameters}

    async def _start_video(self, job: ProviderJob) -> str:
        answer = await self.http.json(
            "POST",
            self._path(job, LONG_RUNNING),
            json=self.veo_body(job),
        )
        name = dig(answer, "name")
        if not isinstance(name, str) or not _OPERATION.match(name) or ".." in name:
            raise ProviderError("bse_provider_error", f"{PROVIDER} answered without an operation name.", True)
        return name

    async def _wait_video(self, job: ProviderJob, name: str) -> ProviderResult:
        if not _OPERATION.match(name) or ".." in name:
            raise ProviderError("bse_provider_error", f"Malformed {PROVIDER} operation name.", False)
        operation = await self.http.poll_while(
            f"/v1beta/{name}", lambda op: isinstance(op, dict) and op.get("done") is not True
        )
        if not isinstance(operation, dict):
            message = f"{PROVIDER} sent an operation that is no object."
            raise ProviderError("bse_provider_error", message, True)
        if isinstance(operation.get("error"), dict):
            raise _operation_failure(name, operation["error"])
        answer = dig(operation, "response", "generateVideoResponse")
        samples = dig(answer, "generatedSamples")
        found = [await self._video(job, s) for s in (samples if isinstance(samples, list) else [])]
        outputs = [o for o in found if o is not None]
        if outputs:
            return ProviderResult(outputs=outputs)
        reasons = dig(answer, "raiMediaFilteredReasons")
        if reasons or dig(answer, "raiMediaFilteredCount"):
            text = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else "filtered"
            raise _policy(text[:300])
        raise ProviderError(
            "bse_provider_error", f"{PROVIDER} operation {name} finished without a video.", True
        )

    async def _video(self, job: ProviderJob, sample: Any) -> ProviderOutput | None:
        video = dig(sample, "video")
        encoded = dig(video, "encodedVideo")
        if isinstance(encoded, str) and encoded:
            return ProviderOutput(ext="mp4", content_type="video/mp4", data=decode_base64(PROVIDER, encoded))
        uri = dig(video, "uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            return None
        if httpx.URL(uri).host != self.api_host:
            # Not the API's own host: never send the key there; the worker downloads it.
            ext = ext_for(uri, job)
            return ProviderOutput(ext=ext, content_type=CONTENT_TYPES.get(ext, "video/mp4"), url=uri)
        return await self._download(uri)

    async def _download(self, uri: str) -> ProviderOutput:
        """The video behind the key; transient failures are tried again (it is already paid for)."""
        for attempt in range(3):
            try:
                response = await self.http.send("GET", uri)
            except ProviderError as exc:
                transient = exc.http_status is None or exc.http_status >= 500 or exc.http_status == 429
                if not transient or attempt == 2:
                    raise
                await asyncio.sleep(exc.retry_after or self.http.poll_interval * (attempt + 1))
                continue
            location = response.headers.get("location")
            if response.is_redirect and location:
                # Signed storage URL: public by design, fetched (and checked) by the worker.
                target = str(response.url.join(location))
                return ProviderOutput(ext="mp4", content_type="video/mp4", url=target)
            if len(response.content) > self.max_output_bytes:
                raise ProviderError(
                    "bse_provider_error", f"{PROVIDER} sent a video over the size limit.", False
                )
            if not response.content:
                raise ProviderError("bse_provider_error", f"{PROVIDER} sent an empty video.", True)
            return ProviderOutput(ext="mp4", content_type="video/mp4", data=response.content)
        raise AssertionError("unreachable")


def _operation_failure(name: str, error: dict[str, Any]) -> ProviderError:
    code = error.get("code")
    status = str(error.get("status") or "")
    message = str(error.get("message") or "no details").replace("\n", " ")[:300]
    if _looks_like_policy(message):
        return _policy(message)
    if code == 1 or status == "CANCELLED":
        return canceled_upstream(PROVIDER, name)
    if code == 3 or status == "INVALID_ARGUMENT":
        return ProviderError("bse_invalid_input", f"{PROVIDER} rejected the request: {message}", False)
    if code == 8 or status == "RESOURCE_EXHAUSTED":
        return ProviderError("bse_provider_unavailable", f"{PROVIDER} is out of capacity: {message}", True)
    return ProviderError("bse_provider_error", f"{PROVIDER} operation {name} failed: {message}", True)
