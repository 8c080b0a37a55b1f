"""Stored outputs are in the format the client asked for, whatever the provider sent.

Providers disagree on formats (one model answers JPEG only, another WebP by default),
so a model's format list would otherwise be a promise only some of its providers
keep. Images are sniffed by their bytes and re-encoded when they differ; video is
stored as sent (re-encoding video costs minutes), with its real type.
"""

from __future__ import annotations

import asyncio
import io

import structlog
from PIL import Image

from genplane.mediatypes import sniff
from genplane.providers.base import ProviderError, ProviderOutput

log = structlog.get_logger("genplane.media")

_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def _reencode(data: bytes, fmt: str) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        img: Image.Image = opened
        if fmt == "jpg" and img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        elif img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA")
        out = io.BytesIO()
        img.save(out, _PIL_FORMATS[fmt], **({"quality": 95} if fmt in ("jpg", "webp") else {}))
        return out.getvalue()


async def in_requested_format(output: ProviderOutput, model_type: str, fmt: str) -> ProviderOutput:
    """``output`` (with its bytes) typed by its content, re-encoded to ``fmt`` for images."""
    assert output.data is not None
    found = sniff(output.data)
    if found is None or not found.supported or found.kind != model_type:
        what = found.content_type if found else "an unrecognised file"
        raise ProviderError(
            "bse_provider_error", f"The provider returned {what} where {model_type} was expected.", True
        )
    if model_type != "image" or fmt not in _PIL_FORMATS or found.ext == fmt:
        return ProviderOutput(ext=found.ext, content_type=found.content_type, data=output.data)
    try:
        data = await asyncio.to_thread(_reencode, output.data, fmt)
    except (OSError, ValueError) as exc:
        # Pillow's text (an object repr, sometimes a path) is for the log; tenants see the gist.
        log.info("media.reencode_failed", format=found.ext, target=fmt, error=repr(exc))
        message = f"The provider's {found.ext} image could not be decoded."
        raise ProviderError("bse_provider_error", message, retryable=True) from exc
    return ProviderOutput(ext=fmt, content_type=_CONTENT_TYPES[fmt], data=data)
