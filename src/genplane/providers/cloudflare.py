"""Cloudflare Workers AI adapter: text-to-image models over the REST API.

Protocol facts this adapter relies on:

- One call, ``POST {base}/accounts/{account_id}/ai/run/{model}`` with an API token as
  ``Authorization: Bearer``, does the whole generation and answers with the image:
  there is no task, no id and nothing to poll or cancel. ``submit`` therefore makes
  the calls and holds the result in memory for ``wait`` (after a restart the result
  is gone and the worker submits again), and ``cancel`` has nothing to stop.
- A call makes one image, so ``output_number`` N is N calls (run concurrently, with
  distinct seeds where the model takes one).
- The answer's shape depends on the model, and only the Content-Type tells which:
  the SDXL family and Leonardo Phoenix answer the raw image bytes (``image/png``,
  ``image/jpeg``), while FLUX and Lucid Origin answer the usual Cloudflare JSON
  envelope ``{"result": {"image": <base64>}, "success", "errors", "messages"}``.
- Inputs differ per model and some schemas forbid unknown properties (FLUX.1
  schnell takes only ``prompt`` and ``steps``; a stray ``seed`` is a 400), so each
  known model family has a profile of what it accepts. The FLUX.2 models take
  multipart form data only (even for a bare prompt), with reference images as
  binary parts ``input_image_0`` .. ``input_image_3``; SDXL img2img takes one
  base64 ``image_b64``. The catalogue's ``fields`` can name a parameter a profile
  leaves out, or name it ``""`` to never send it.
- Failures keep the envelope: ``{"success": false, "errors": [{"code", "message"}]}``.
  The code matters more than the HTTP status: a prompt the safety filter refuses is
  a 400 whose message says NSFW (code 3030), an exhausted free daily allocation is
  a 429 (code 3036) that waiting does not cure, while a 429 with code 3040 is a
  capacity shortage worth retrying; an unknown model is code 5007, and rejected
  credentials are 10000 (or 6003/6111 for a malformed header).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from genplane.contract.errors import ErrorName
from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.error_codes import coded_error
from genplane.providers.forms import form_value
from genplane.providers.http import HeldResults, ProviderHttp, dig, json_body, key_headers
from genplane.providers.outputs import decode_base64
from genplane.providers.sizes import exact_pixels, size_near_area
from genplane.providers.synchronous import all_or_first_failure
from genplane.settings import Settings

PROVIDER = "cloudflare"
ID_PREFIX = "cf-"
# Sentinel for ``fields: {generation_ratio: width,height}``: send pixel dimensions.
WIDTH_HEIGHT = "width,height"
_TARGET_AREA = 1024 * 1024
_STEP, _MIN_SIDE, _MAX_SIDE = 32, 256, 1920

_CREDIT_CODES = {3036}
_MODERATION_CODES = {3030}
_CREDENTIAL_CODES = {10000, 6003, 6111, 9106, 9109}
_MODEL_CODES = {5007, 3042}
_MODERATION_WORDS = ("nsfw", "content policy", "unsafe content", "safety filter")


@dataclass(frozen=True)
class Profile:
    """What one model family accepts; ``None`` means the parameter is not sent by default."""

    multipart: bool = False
    size: bool = True
    seed: str | None = "seed"
    negative_prompt: str | None = "negative_prompt"
    steps: str | None = "num_steps"
    guidance: str | None = "guidance"
    image: str | None = None  # input image parameter; "{i}" numbers several
    max_images: int = 1


_SD = Profile(image="image_b64")
PROFILES: tuple[tuple[str, Profile], ...] = (
    ("@cf/black-forest-labs/flux-1-schnell",
     Profile(size=False, seed=None, negative_prompt=None, steps="steps", guidance=None)),
    ("@cf/black-forest-labs/flux-2-",
     Profile(multipart=True, negative_prompt=None, steps="steps", image="input_image_{i}", max_images=4)),
    ("@cf/leonardo/lucid-origin", Profile(negative_prompt=None)),
    ("@cf/leonardo/phoenix", Profile()),
    ("@cf/bytedance/stable-diffusion-xl-lightning", _SD),
    ("@cf/stabilityai/stable-diffusion-xl-base", _SD),
    ("@cf/lykon/dreamshaper", _SD),
    ("@cf/runwayml/stable-diffusion-v1-5", _SD),
)
DEFAULT_PROFILE = Profile()


def profile_for(model: str) -> Profile:
    for prefix, profile in PROFILES:
        if model.startswith(prefix):
            return profile
    return DEFAULT_PROFILE


def dimensions(ratio: str) -> tuple[int, int]:
    """Width and height near one megapixel for ``"W:H"``, multiples of 32 within 256..1920."""
    return size_near_area(ratio, _TARGET_AREA, _STEP, _MIN_SIDE, _MAX_SIDE)


def cloudflare_error(errors: Any, fallback: ProviderError | None = None) -> ProviderError:
    """The contract error for a Workers AI ``errors`` list."""
    items = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    codes = {e.get("code") for e in items}
    text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in items)[:300] or "no error details"
    lowered = text.lower()
    meaning: ErrorName | None = None
    if codes & _MODERATION_CODES or any(word in lowered for word in _MODERATION_WORDS):
        meaning = "bse_content_policy_violation"
    elif codes & _CREDIT_CODES or "daily free allocation" in lowered:
        meaning = "bse_provider_credits_exhausted"
    elif codes & _CREDENTIAL_CODES:
        return ProviderError("bse_provider_unavailable", f"{PROVIDER} refused the credentials.", True)
    elif codes & _MODEL_CODES:
        meaning = "bse_provider_unavailable"
    return coded_error(meaning, f"{PROVIDER}: {text}", fallback)


def _refine(response: httpx.Response, shared: ProviderError) -> ProviderError:
    errors = json_body(response).get("errors")
    if not errors:
        return shared
    return cloudflare_error(errors, fallback=shared)


def sniff(data: bytes) -> tuple[str, str] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg", "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


class CloudflareAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_token = settings.cloudflare_api_token is not None
        self.account_id = settings.cloudflare_account_id.strip()
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.cloudflare_base_url, _refine,
            headers=key_headers(settings.cloudflare_api_token),
        )
        self.held = HeldResults(PROVIDER)

    def configured(self) -> bool:
        return self._has_token and bool(self.account_id) and bool(self.http.base_url)

    def path(self, model: str) -> str:
        return f"/accounts/{self.account_id}/ai/run/{model.lstrip('/')}"

    # -- the native request ---------------------------------------------------------

    def request_fields(self, job: ProviderJob, index: int = 0) -> dict[str, Any]:
        """The scalar inputs of the ``index``-th call (input images are added by the caller)."""
        profile = profile_for(job.native_model_id)
        body: dict[str, Any] = {job.name("generation_prompt", "prompt"): job.prompt}
        ratio_name = job.optional_name("generation_ratio", WIDTH_HEIGHT if profile.size else None)
        if ratio_name == WIDTH_HEIGHT:
            ratio = str(job.value("generation_ratio", job.ratio))
            body["width"], body["height"] = exact_pixels(ratio) or dimensions(ratio)
        elif ratio_name:
            body[ratio_name] = job.value("generation_ratio", job.ratio)
        seed_name = job.optional_name("generation_seed", profile.seed)
        if job.seed is not None and seed_name:
            # Distinct seeds, or N calls would paint the same picture N times.
            body[seed_name] = (job.seed + index) % 2**32
        optional = (
            ("generation_negative_prompt", profile.negative_prompt),
            ("generation_guidance_scale", profile.guidance),
            ("generation_num_inference_steps", profile.steps),
        )
        for unified, default in optional:
            value = job.specific.get(unified)
            name = job.optional_name(unified, default)
            if value is not None and value != "" and name:
                body[name] = job.value(unified, value)
        body.update(job.params)
        return body

    def _image_names(self, job: ProviderJob, profile: Profile) -> list[str]:
        name = job.optional_name("generation_input_file", profile.image)
        if not name or not job.inputs:
            return []
        if "{i}" not in name:
            return [name]
        return [name.format(i=i) for i in range(min(len(job.inputs), profile.max_images))]

    async def _call(self, job: ProviderJob, index: int) -> ProviderOutput:
        profile = profile_for(job.native_model_id)
        fields = self.request_fields(job, index)
        names = self._image_names(job, profile)
        path = self.path(job.native_model_id)
        if profile.multipart:
            parts: list[tuple[str, Any]] = [(k, (None, form_value(v))) for k, v in fields.items()]
            for name, image in zip(names, job.inputs, strict=False):
                ext = (sniff(image.data) or ("png", ""))[0]
                parts.append((name, (f"{name}.{ext}", image.data, image.content_type)))
            response = await self.http.send("POST", path, files=parts)
        else:
            for name, image in zip(names, job.inputs, strict=False):
                fields[name] = base64.b64encode(image.data).decode()
            response = await self.http.send("POST", path, json=fields)
        return self._output(response)

    def _output(self, response: httpx.Response) -> ProviderOutput:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith("image/"):
            data = response.content
        else:
            data = self._image_from_envelope(self.http.decode(response))
        kind = sniff(data)
        if kind is None:
            raise ProviderError("bse_provider_error", f"{PROVIDER} answered without a usable image.", True)
        ext, mime = kind
        return ProviderOutput(ext=ext, content_type=mime, data=data)

    @staticmethod
    def _image_from_envelope(doc: Any) -> bytes:
        if dig(doc, "success") is False or dig(doc, "errors"):
            raise cloudflare_error(dig(doc, "errors"))
        encoded = dig(doc, "result", "image")
        if not isinstance(encoded, str) or not encoded:
            raise ProviderError("bse_provider_error", f"{PROVIDER} answered without an image.", True)
        return decode_base64(PROVIDER, encoded)

    # -- the adapter protocol -------------------------------------------------------

    async def submit(self, job: ProviderJob) -> str:
        outputs = await all_or_first_failure(self._call(job, i) for i in range(max(1, job.output_number)))
        return self.held.hold(f"{ID_PREFIX}{uuid.uuid4().hex}", ProviderResult(outputs=outputs))

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        return self.held.take(prediction_id)

    async def cancel(self, prediction_id: str) -> bool:
        # The call already ran to its end inside ``submit``: there is nothing upstream to stop.
        self.held.drop(prediction_id)
        return False
