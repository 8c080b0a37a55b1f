"""The self-hosted adapter's OpenAI-compatible protocol (LocalAI, vLLM-Omni, SD.Next, ...).

Protocol facts this relies on:

- ``POST /v1/images/generations`` with ``{model, prompt, n, size: "WxH",
  response_format}`` answers synchronously with ``data[].b64_json`` (or ``data[].url``),
  so the call is the whole generation; with input images the same fields go as
  multipart to ``POST /v1/images/edits`` (one ``image`` part, or ``image[]`` parts).
- Servers differ in what they add: most take ``seed`` and ``negative_prompt`` as extra
  fields, which is where they are sent (the catalogue renames or drops them, ``""``).
- Base64 is asked for: URLs would point at the operator's own box, which may sit on a
  private network the worker's downloader refuses; a URL on the server's own host is
  therefore fetched here, any other one is left to the worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.http import ProviderHttp, dig
from genplane.providers.openai_images import images_answer
from genplane.providers.outputs import CONTENT_TYPES, decode_base64, ext_for, image_output

PROVIDER = "selfhosted"


def request_fields(job: ProviderJob, width: int, height: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"model": job.native_model_id, "prompt": job.prompt}

    def put(unified: str, default: str, value: Any) -> None:
        name = job.name(unified, default)
        if name and value is not None:
            fields[name] = value

    put("generation_output_number", "n", max(1, job.output_number))
    put("generation_ratio", "size", f"{width}x{height}")
    put("generation_seed", "seed", job.seed)
    put("generation_negative_prompt", "negative_prompt", job.specific.get("generation_negative_prompt"))
    native_format = job.field_names.get("generation_output_format")  # an extension some servers have
    if native_format:
        fields[native_format] = job.value("generation_output_format", job.output_format)
    fields["response_format"] = "b64_json"
    fields.update(job.params)
    return fields


async def generate(
    http: ProviderHttp, job: ProviderJob, width: int, height: int, request_timeout: float
) -> ProviderResult:
    fields = request_fields(job, width, height)
    started = asyncio.get_running_loop().time()
    items = dig(await images_answer(http, job, fields, request_timeout), "data")
    if not isinstance(items, list) or not items:
        raise ProviderError("bse_provider_error", f"{PROVIDER} answered without images.", True)
    outputs = [await _output(http, job, item, request_timeout) for item in items]
    return ProviderResult(outputs=outputs, predict_time=round(asyncio.get_running_loop().time() - started, 3))


async def _output(http: ProviderHttp, job: ProviderJob, item: Any, request_timeout: float) -> ProviderOutput:
    encoded, url = dig(item, "b64_json"), dig(item, "url")
    if isinstance(encoded, str) and encoded:
        data = decode_base64(PROVIDER, encoded)
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        if httpx.URL(url).host != httpx.URL(http.base_url).host:
            ext = ext_for(url, job)
            return ProviderOutput(ext=ext, content_type=CONTENT_TYPES.get(ext, "image/png"), url=url)
        data = (await http.send("GET", url, request_timeout=request_timeout)).content
    else:
        raise ProviderError("bse_provider_error", f"{PROVIDER} sent an image without data.", True)
    return image_output(PROVIDER, data)
