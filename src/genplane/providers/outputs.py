"""Helpers the URL-returning adapters (Replicate, fal) share: output files and JSON digging.

Providers hand back files as URLs (sometimes data URIs) whose suffix or declared type
is the only hint of the format; the worker sniffs the bytes again when it downloads,
so these are best guesses that keep the record readable, not a security check.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput

CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
}




def ext_for(url: str, job: ProviderJob, content_type: Any = None) -> str:
    """An output's extension: from its declared type, its URL's suffix, or the request."""
    by_type = next((e for e, t in CONTENT_TYPES.items() if t == content_type), None)
    if by_type:
        return by_type
    suffix = urlsplit(url).path.rsplit("/", 1)[-1].rpartition(".")[2].lower()
    suffix = {"jpeg": "jpg"}.get(suffix, suffix)
    if suffix in CONTENT_TYPES:
        return suffix
    return "mp4" if job.model_type == "video" else job.output_format


def decode_data_uri(provider: str, uri: str) -> tuple[str, bytes]:
    """``data:<type>;base64,<data>`` -> (content type, bytes)."""
    header, _, payload = uri.partition(",")
    content_type = header[5:].split(";", 1)[0] or "application/octet-stream"
    try:
        return content_type, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderError("bse_provider_error", f"{provider} sent an undecodable data URI.", True) from exc


def output_for(provider: str, url: str, job: ProviderJob, content_type: Any = None) -> ProviderOutput:
    """A URL output for the worker to download, or the bytes of a data URI."""
    if url.startswith("data:"):
        declared, data = decode_data_uri(provider, url)
        ext = ext_for("", job, declared)
        return ProviderOutput(ext=ext, content_type=declared, data=data)
    ext = ext_for(url, job, content_type)
    return ProviderOutput(ext=ext, content_type=CONTENT_TYPES.get(ext, "application/octet-stream"), url=url)


def canceled_upstream(provider: str, job_id: str) -> ProviderError:
    message = f"{provider} job {job_id} was canceled upstream."
    return ProviderError("bse_provider_error", message, retryable=True)


_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def image_output(provider: str, data: bytes, wanted: str) -> ProviderOutput:
    """Image bytes as an output in the requested format, re-encoded when the provider sent another.

    For providers with no output-format option (ComfyUI's SaveImage writes PNG, Gemini
    image models answer PNG): the record promises the format the client asked for.
    CPU work: call it through ``asyncio.to_thread``.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            sent = next((e for e, f in _PIL_FORMATS.items() if f == opened.format), None)
            target = wanted if wanted in _PIL_FORMATS else (sent or "png")
            if sent == target:
                return ProviderOutput(ext=target, content_type=CONTENT_TYPES[target], data=data)
            image = opened.convert("RGB") if target == "jpg" and opened.mode not in ("RGB", "L") else opened
            out = io.BytesIO()
            image.save(out, _PIL_FORMATS[target])
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        message = f"{provider} sent an image that cannot be decoded."
        raise ProviderError("bse_provider_error", message, True) from exc
    return ProviderOutput(ext=target, content_type=CONTENT_TYPES[target], data=out.getvalue())
