"""Real, small media files for fakes to return, and a file host whose URLs expire."""

from __future__ import annotations

import io
import secrets
import time
from dataclasses import dataclass, field

from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from genplane.providers.local_render import render_preview_video


def png_bytes(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def image_bytes(fmt: str = "png", width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    pil = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    Image.new("RGB", (width, height), (30, 120, 200)).save(buf, pil)
    return buf.getvalue()


def mp4_bytes(seconds: int = 1) -> bytes:
    return render_preview_video("fake", 1, 64, 64, seconds, with_audio=False)


CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
                 "mp4": "video/mp4"}


@dataclass
class FileHost:
    """Serves generated files at ``/files/<token>.<ext>`` until they expire (then 404),
    as provider CDNs do with signed, short-lived URLs."""

    base_url: str
    ttl_seconds: float = 3600.0
    files: dict[str, tuple[bytes, str, float]] = field(default_factory=dict)
    fail_next: int = 0  # answer 503 to this many downloads first

    def publish(self, data: bytes, ext: str) -> str:
        name = f"{secrets.token_hex(8)}.{ext}"
        self.files[name] = (data, CONTENT_TYPES.get(ext, "application/octet-stream"),
                            time.monotonic() + self.ttl_seconds)
        return f"{self.base_url.rstrip('/')}/files/{name}"

    async def serve(self, request: Request) -> Response:
        if self.fail_next > 0:
            self.fail_next -= 1
            return Response("busy", status_code=503)
        entry = self.files.get(request.path_params["name"])
        if entry is None or entry[2] < time.monotonic():
            return Response("<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                            status_code=403, media_type="application/xml")
        return Response(entry[0], media_type=entry[1])
