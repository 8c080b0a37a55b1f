"""The operator's own GPU box: an OpenAI-compatible images server, or ComfyUI.

``selfhosted_protocol`` picks the protocol (``selfhosted_openai.py``, ``comfyui.py``);
this class holds what both share: the base URL with an optional Bearer key (neither
protocol has auth of its own: a reverse proxy in front usually adds it), the error
mapping, and picture sizes. Sizes are computed from the unified ratio at about one
megapixel in multiples of 64 (the SDXL buckets: 16:9 -> 1344x768), unless the
catalogue maps the ratio to an explicit ``"WxH"``.

The OpenAI-compatible call is synchronous (held until ``wait``); a ComfyUI prompt id is
polled, and survives a restart of this process (the box keeps its queue and history).
"""

from __future__ import annotations

import math
import uuid

import httpx

from genplane.providers.base import ProviderError, ProviderJob, ProviderResult
from genplane.providers.comfyui import ComfyUI, comfy_error
from genplane.providers.http import HeldResults, ProviderHttp, dig, json_body, key_headers
from genplane.providers.selfhosted_openai import generate
from genplane.providers.sizes import aspect, exact_pixels
from genplane.providers.synchronous import whole_generation_timeout
from genplane.settings import Settings

PROVIDER = "selfhosted"
SYNC_PREFIX = "selfhosted-sync-"
_POLICY_CODES = {"content_policy_violation", "moderation_blocked", "content_filter"}


def dimensions(job: ProviderJob, pixels: int = 1024 * 1024, multiple: int = 64) -> tuple[int, int]:
    """Width and height for the job's ratio: the catalogue's ``"WxH"``, else ~``pixels`` in area."""
    ratio = str(job.value("generation_ratio", job.ratio))
    exact = exact_pixels(ratio)
    if exact is not None:
        return exact
    wide = math.sqrt(pixels * aspect(ratio))

    def snap(side: float) -> int:
        return max(multiple, round(side / multiple) * multiple)

    return snap(wide), snap(pixels / wide)


def refine_error(response: httpx.Response, shared: ProviderError) -> ProviderError:
    """ComfyUI's graph validation failures, and OpenAI-style safety codes, read from the body."""
    body = json_body(response)
    if response.status_code == 400 and "node_errors" in body:
        # The graph is the catalogue's (or the box lacks a checkpoint): the operator's to fix.
        message = f"ComfyUI rejected the workflow: {comfy_error(body)}"
        return ProviderError("bse_model_not_configured", message, retryable=False)
    if str(dig(body, "error", "code") or "") in _POLICY_CODES:
        message = str(dig(body, "error", "message") or "refused")[:300]
        return ProviderError("bse_content_policy_violation", f"{PROVIDER} refused: {message}", False)
    return shared


class SelfHostedAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.protocol = settings.selfhosted_protocol
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.selfhosted_base_url.strip(), refine_error,
            headers=key_headers(settings.selfhosted_api_key),
        )
        self.image_timeout = whole_generation_timeout(settings)
        self.comfy = ComfyUI(self.http, settings.max_output_file_bytes)
        self.held = HeldResults(PROVIDER)

    def configured(self) -> bool:
        return self.http.base_url.startswith(("http://", "https://"))

    async def submit(self, job: ProviderJob) -> str:
        width, height = dimensions(job)
        if self.protocol == "comfyui":
            return await self.comfy.submit(job, width, height)
        result = await generate(self.http, job, width, height, self.image_timeout)
        return self.held.hold(f"{SYNC_PREFIX}{uuid.uuid4().hex}", result)

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        if prediction_id.startswith(SYNC_PREFIX):
            return self.held.take(prediction_id)
        return await self.comfy.wait(job, prediction_id)

    async def cancel(self, prediction_id: str) -> bool:
        if prediction_id.startswith(SYNC_PREFIX):
            self.held.drop(prediction_id)  # made already; only forget it
            return False
        return await self.comfy.cancel(prediction_id)
