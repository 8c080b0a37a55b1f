"""Turning what providers hand back (URLs, data URIs, base64, bytes) into output files.

Providers hand back files as URLs (sometimes data URIs) whose suffix or declared type
is the only hint of the format; the worker sniffs the bytes again when it downloads,
so these are best guesses that keep the record readable, not a security check.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from genplane.mediatypes import sniff
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


def decode_base64(provider: str, encoded: str) -> bytes:
    """Bytes a provider sent as base64; garbage is the provider's fault and may pass on a retry."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderError("bse_provider_error", f"{provider} sent undecodable base64.", True) from exc


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


def image_output(provider: str, data: bytes) -> ProviderOutput:
    """Image bytes as an output typed by their content.

    The worker re-encodes outputs into the format the client asked for
    (``genplane.jobs.media``), so providers without a format option (ComfyUI's
    SaveImage writes PNG, Gemini image models answer PNG) need nothing more here.
    """
    found = sniff(data)
    if found is None or found.kind != "image":
        raise ProviderError("bse_provider_error", f"{provider} sent something that is not an image.", True)
    return ProviderOutput(ext=found.ext, content_type=found.content_type, data=data)
