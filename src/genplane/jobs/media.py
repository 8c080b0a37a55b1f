"""Stored outputs are in the format the client asked for, whatever the provider sent.

Providers disagree on formats (one model answers JPEG only, another WebP by default),
so a model's format list would otherwise be a promise only some of its providers
keep. Images are sniffed by their bytes and re-encoded when they differ; video is
stored as sent (re-encoding video costs minutes), with its real type.

An image already in the requested format is stored byte for byte as the provider sent
it, without being decoded: its header and framing are checked instead
(:func:`genplane.mediatypes.image_size`, microseconds where a decode takes milliseconds).
Only an image whose framing that check cannot confirm (cut short, the right magic and
no image behind it, or merely padded oddly) is decoded whole, and fails the attempt when
it does not decode. A conversion decodes anyway, behind the pixel limit.
"""

from __future__ import annotations

import asyncio
import io

import structlog
from PIL import Image

from genplane.jobs.fetch import MAX_PIXELS
from genplane.mediatypes import image_size, sniff
from genplane.providers.base import ProviderError, ProviderOutput

log = structlog.get_logger("genplane.media")

_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def _decoded_size(data: bytes, source: str) -> tuple[int, int]:
    """The size of an image checked (its chunks' CRCs, for PNG) and decoded whole, unless past the
    pixel limit; Pillow's error when either fails."""
    formats = [_PIL_FORMATS[source]]
    with Image.open(io.BytesIO(data), formats=formats) as img:
        size = img.size
        if size[0] * size[1] > MAX_PIXELS:
            return size
        img.verify()
    with Image.open(io.BytesIO(data), formats=formats) as img:  # verify() leaves it unusable
        img.load()
    return size


def _reencode(data: bytes, fmt: str, source: str) -> bytes:
    with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[source]]) as opened:
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
    if model_type != "image":
        return ProviderOutput(ext=found.ext, content_type=found.content_type, data=output.data)
    size = image_size(output.data)
    if size is None:  # framing not confirmed: a decoder decides (and says why, for the log)
        try:
            size = await asyncio.to_thread(_decoded_size, output.data, found.ext)
        except Exception as exc:  # Pillow raises many types for corrupt files
            raise _undecodable(found.ext, fmt, exc) from exc
    if fmt not in _PIL_FORMATS or found.ext == fmt:
        return ProviderOutput(ext=found.ext, content_type=found.content_type, data=output.data)
    width, height = size
    if width * height > MAX_PIXELS:
        message = f"The provider's image is {width}x{height}, too large to convert to {fmt}."
        raise ProviderError("bse_provider_error", message, retryable=True)
    try:
        data = await asyncio.to_thread(_reencode, output.data, fmt, found.ext)
    except Exception as exc:
        raise _undecodable(found.ext, fmt, exc) from exc
    return ProviderOutput(ext=fmt, content_type=_CONTENT_TYPES[fmt], data=data)


def _undecodable(ext: str, fmt: str, exc: Exception) -> ProviderError:
    # Pillow's text (an object repr, sometimes a path) is for the log; tenants see the gist.
    log.info("media.image_undecodable", format=ext, target=fmt, error=repr(exc))
    return ProviderError("bse_provider_error", f"The provider's {ext} image could not be decoded.", True)
