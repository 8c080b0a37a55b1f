"""What a file is, by its first bytes.

Declared types (Content-Type headers, URL suffixes) come from clients and providers
and are often wrong; stored files and their checks rely on the bytes instead.
"""

from __future__ import annotations

import struct
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


# -- an image's size and framing, from its bytes, without decoding it ------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk, always these 12 bytes
#: How far from the end an image's closing marker may sit (some writers pad a little).
_TAIL = 256
#: JPEG segments read before the scan starts, at most (real files have a handful).
_MAX_JPEG_SEGMENTS = 256
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, JPEG or WebP image when its framing is whole; else None.

    Read from the header and checked against the end (PNG: IHDR first, the IEND chunk at
    the end; JPEG: the segments up to the scan, then the end-of-image marker; WebP: the
    RIFF size and the VP8/VP8L/VP8X header), so a file cut short, or one with the right
    magic but no image structure, is caught in microseconds: no pixel is decoded.
    Compressed data damaged inside an intact frame is not caught; that takes a decoder.
    """
    try:
        if data.startswith(_PNG_SIGNATURE):
            return _png_size(data)
        if data.startswith(b"\xff\xd8\xff"):
            return _jpeg_size(data)
        if len(data) >= 30 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except (struct.error, IndexError):  # a header field beyond the end of the data
        return None
    return None


def _whole(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _png_size(data: bytes) -> tuple[int, int] | None:
    length, kind, width, height = struct.unpack_from(">I4sII", data, 8)
    if length != 13 or kind != b"IHDR" or data.find(_PNG_END, max(33, len(data) - _TAIL)) < 0:
        return None
    return _whole(width, height)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, size = 2, None
    for _ in range(_MAX_JPEG_SEGMENTS):
        while data[pos] == 0xFF and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            size = _whole(width, height)
        if marker == 0xDA:  # the scan: its end is the end-of-image marker, near the end
            scan = pos + 2 + length
            if size is None or data.find(b"\xff\xd9", max(scan, len(data) - _TAIL)) < 0:
                return None
            return size
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    (riff,) = struct.unpack_from("<I", data, 4)
    if riff + 8 > len(data) or riff < 22:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        w0, w1, w2, h0, h1, h2 = data[24:30]
        return _whole((w0 | w1 << 8 | w2 << 16) + 1, (h0 | h1 << 8 | h2 << 16) + 1)
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", data, 26)
        return _whole(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", data, 21)
        return _whole((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    return None
