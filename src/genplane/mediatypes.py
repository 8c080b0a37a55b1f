"""What a file is, by its first bytes.

Declared types (Content-Type headers, URL suffixes) come from clients and providers
and are often wrong; stored files and their checks rely on the bytes instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Sniffed:
    content_type: str
    ext: str
    kind: Literal["image", "video", "other"]
    supported: bool  # whether genplane stores this type



# ISO base media brands that are not video (still images, audio).
_ISO_IMAGE_BRANDS = {
    b"avif": ("image/avif", "avif"),
    b"avis": ("image/avif", "avif"),
    b"heic": ("image/heic", "heic"),
    b"heix": ("image/heic", "heic"),
    b"heim": ("image/heic", "heic"),
    b"heis": ("image/heic", "heic"),
    b"hevc": ("image/heic-sequence", "heic"),
    b"hevx": ("image/heic-sequence", "heic"),
    b"mif1": ("image/heif", "heif"),
    b"msf1": ("image/heif-sequence", "heif"),
}
_ISO_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P "}


def sniff(data: bytes) -> Sniffed | None:
    """The type of ``data`` by its magic bytes; ``None`` when it is not recognised."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image/png", "png", "image", True)
    if data.startswith(b"\xff\xd8\xff"):
        return Sniffed("image/jpeg", "jpg", "image", True)
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return Sniffed("image/webp", "webp", "image", True)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image/gif", "gif", "image", False)
    if len(data) >= 12 and data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _ISO_IMAGE_BRANDS:
            content_type, ext = _ISO_IMAGE_BRANDS[brand]
            return Sniffed(content_type, ext, "image", False)
        if brand in _ISO_AUDIO_BRANDS:
            return Sniffed("audio/mp4", "m4a", "other", False)
        if brand == b"qt  ":
            return Sniffed("video/quicktime", "mov", "video", True)
        return Sniffed("video/mp4", "mp4", "video", True)
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        head = data[:64]
        if b"webm" in head:
            return Sniffed("video/webm", "webm", "video", True)
        return Sniffed("video/x-matroska", "mkv", "video", True)
    stripped = data[:512].lstrip()
    if stripped[:1] == b"<":
        lowered = stripped[:100].lower()
        if lowered.startswith((b"<!doctype html", b"<html")):
            return Sniffed("text/html", "html", "other", False)
        return Sniffed("application/xml", "xml", "other", False)
    if stripped[:1] in (b"{", b"["):
        return Sniffed("application/json", "json", "other", False)
    return None


def describe(sniffed: Sniffed | None) -> str:
    return sniffed.content_type if sniffed else "an unrecognised file"
