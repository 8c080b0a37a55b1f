"""A fake OpenAI API: the Images API (generations, edits) and the Videos API (Sora).

Same wire format as the real service: ``Authorization: Bearer`` (401 with
``{"error": {"message", "type", "param", "code"}}`` otherwise), JSON or multipart
bodies, the real size and duration lists, ``b64_json`` images (DALL-E URLs on a CDN
host that expire), video jobs moving ``queued`` -> ``in_progress`` -> ``completed`` /
``failed`` and their MP4 behind the key at ``/v1/videos/{id}/content``. There is no
cancel in the real API; ``DELETE`` removes finished videos and refuses running ones.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import functools
import io
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, image_bytes, mp4_bytes
from tests.fakes.network import FakeNetwork

IMAGE_SIZES = {
    "gpt-image-1": {"1024x1024", "1536x1024", "1024x1536", "auto"},
    "dall-e-3": {"1024x1024", "1792x1024", "1024x1792"},
}
VIDEO_SIZES = {
    "sora-2": {"1280x720", "720x1280"},
    "sora-2-pro": {"1280x720", "720x1280", "1792x1024", "1024x1792"},
}


#: The image models the Images API serves as of 2026-12-02: dall-e-3 and gpt-image-1 were
#: shut down, gpt-image-1-mini on 2026-12-01, and the Videos API (Sora 2) on 2026-09-24
#: (https://developers.openai.com/api/docs/deprecations, read 2026-12-02). Any other id is a
#: 404 ``model_not_found``. Tests of the adapter's older protocol paths opt in to those ids.
SERVED_MODELS = frozenset({"gpt-image-2.6-sunburst", "gpt-image-2.6-flare"})
#: The ids served before the shutdowns above, for tests of the adapter's protocol handling.
ARCHIVED_MODELS = frozenset(
    {"gpt-image-1", "gpt-image-1-mini", "dall-e-3", "dall-e-2", "sora-2", "sora-2-pro"}
)

@functools.cache
def video_bytes() -> bytes:
    return mp4_bytes(1)


def error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
          param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Form fields and file parts of a multipart/form-data body (no python-multipart needed)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    files: list[dict[str, Any]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename() is None:
            fields[str(name)] = payload.decode()
        else:
            files.append({"name": name, "filename": part.get_filename(),
                          "content_type": part.get_content_type(), "data": payload})
    return fields, files


@dataclass
class Video:
    id: str
    model: str
    prompt: str
    seconds: str
    size: str
    created_at: int
    polls: int = 0
    status: str = "queued"
    progress: int = 0
    completed_at: int | None = None
    expires_at: float | None = None
    error: dict[str, str] | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "video", "model": self.model, "status": self.status,
                "progress": self.progress, "created_at": self.created_at, "completed_at": self.completed_at,
                "expires_at": int(self.expires_at) if self.expires_at else None, "seconds": self.seconds,
                "size": self.size, "remixed_from_video_id": None, "error": self.error}


@dataclass
class FakeOpenAI:
    host: str = "api.openai.test"
    served_models: frozenset[str] = SERVED_MODELS  # ids the provider serves
    cdn_host: str = "images.openai.test"
    key: str = "sk-test-key"

    # switches
    pending_polls: int = 0  # video polls answered queued ...
    running_polls: int = 0  # ... then in_progress, then the outcome
    video_outcome: str = "completed"  # or "moderated", "failed"
    fail_submit: int = 0  # 500 to this many creations (images or videos)
    rate_limit_submit: int = 0  # 429 rate_limit_exceeded with Retry-After
    retry_after: int = 1
    insufficient_quota: bool = False  # 429 insufficient_quota: the account is empty
    moderate_submit: bool = False  # the prompt is refused at once (400)
    hang_submit: bool = False
    hang_poll: bool = False
    malformed_submit: bool = False
    malformed_polls: int = 0
    content_errors: int = 0  # 502 to this many content downloads
    content_ttl: float = 3600.0  # how long a finished video can be downloaded

    requests: list[dict[str, Any]] = field(default_factory=list)
    videos: dict[str, Video] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    polls: int = 0

    def __post_init__(self) -> None:
        self.files = FileHost(f"https://{self.cdn_host}", ttl_seconds=3600.0)
        self.app = Starlette(routes=[
            Route("/v1/images/generations", self._images, methods=["POST"]),
            Route("/v1/images/edits", self._images, methods=["POST"]),
            Route("/v1/videos", self._create_video, methods=["POST"]),
            Route("/v1/videos/{video_id}", self._video, methods=["GET", "DELETE"]),
            Route("/v1/videos/{video_id}/content", self._content, methods=["GET"]),
        ])
        self.cdn = Starlette(routes=[Route("/files/{name}", self.files.serve, methods=["GET"])])

    def mount(self, network: FakeNetwork) -> None:
        network.add(self.host, self.app)
        network.add(self.cdn_host, self.cdn)

    @property
    def mp4(self) -> bytes:
        return video_bytes()

    # -- shared ---------------------------------------------------------------------

    async def _read(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        seen: dict[str, Any] = {"method": request.method, "path": request.url.path,
                                "headers": dict(request.headers), "json": None, "form": None, "files": []}
        if content_type.startswith("multipart/form-data"):
            seen["form"], seen["files"] = parse_multipart(content_type, body)
        elif body:
            seen["json"] = await request.json()
        self.requests.append(seen)
        return seen

    def _refuse(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return error(401, "Incorrect API key provided. You can find your API key at the dashboard.",
                         code="invalid_api_key")
        return None

    def _unknown_model(self, model: str) -> Response | None:
        if model in self.served_models:
            return None
        return error(404, f"The model `{model}` does not exist or you do not have access to it.",
                     code="model_not_found")

    async def _creation_failure(self) -> Response | None:
        if self.hang_submit:
            await asyncio.sleep(3600)
        if self.fail_submit > 0:
            self.fail_submit -= 1
            return error(500, "The server had an error while processing your request.", "server_error")
        if self.rate_limit_submit > 0:
            self.rate_limit_submit -= 1
            return error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                         headers={"Retry-After": str(self.retry_after)})
        if self.insufficient_quota:
            return error(429, "You exceeded your current quota, please check your plan and billing details.",
                         "insufficient_quota", "insufficient_quota")
        if self.malformed_submit:
            return Response('{"created": 17', media_type="application/json")
        return None

    # -- images ---------------------------------------------------------------------

    async def _images(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        seen = await self._read(request)
        params: dict[str, Any] = seen["json"] or dict(seen["form"] or {})
        if (failure := await self._creation_failure()) is not None:
            return failure
        model = str(params.get("model", "dall-e-2"))
        if (unknown := self._unknown_model(model)) is not None:
            return unknown
        if self.moderate_submit:
            if model.startswith("dall-e"):
                return error(400, "Your request was rejected as a result of our safety system.",
                             code="content_policy_violation")
            return error(400, "Your request was rejected by the safety system.",
                         "image_generation_user_error", "moderation_blocked")
        n = int(params.get("n", 1))
        size = str(params.get("size", "1024x1024"))
        if size not in IMAGE_SIZES.get(model, {size}):
            return error(400, f"Invalid value: '{size}'.", code="invalid_value", param="size")
        if model == "dall-e-3" and n != 1:
            return error(400, "Invalid 'n': integer above maximum value.", code="integer_above_max_value",
                         param="n")
        if request.url.path.endswith("/edits") and not seen["files"]:
            return error(400, "Missing required parameter: 'image'.", code="missing_required_parameter")
        if model.startswith("dall-e"):
            data = []
            for _ in range(n):
                png = image_bytes("png")
                if params.get("response_format") == "b64_json":
                    data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": "revised"})
                else:
                    data.append({"url": self.files.publish(png, "png"), "revised_prompt": "revised"})
            return JSONResponse({"created": int(time.time()), "data": data})
        fmt = str(params.get("output_format", "png"))
        pictures = [base64.b64encode(image_bytes("jpg" if fmt == "jpeg" else fmt)).decode() for _ in range(n)]
        return JSONResponse({
            "created": int(time.time()), "data": [{"b64_json": p} for p in pictures],
            "background": "opaque", "output_format": fmt, "quality": "medium",
            "size": "1024x1024" if size == "auto" else size,
            "usage": {"input_tokens": 50, "input_tokens_details": {"image_tokens": 0, "text_tokens": 50},
                      "output_tokens": 1056 * n, "total_tokens": 50 + 1056 * n},
        })

    # -- videos ---------------------------------------------------------------------

    async def _create_video(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        seen = await self._read(request)
        params: dict[str, Any] = seen["json"] or dict(seen["form"] or {})
        if (failure := await self._creation_failure()) is not None:
            return failure
        if self.moderate_submit:
            return error(400, "Your request was blocked by our moderation system.", code="moderation_blocked")
        model = str(params.get("model", "sora-2"))
        if (unknown := self._unknown_model(model)) is not None:
            return unknown
        seconds, size = params.get("seconds", "4"), str(params.get("size", "720x1280"))
        if seconds not in ("4", "8", "12"):
            return error(400, f"Invalid value: '{seconds}'. Supported values are: '4', '8', and '12'.",
                         code="invalid_value", param="seconds")
        if size not in VIDEO_SIZES.get(model, set()):
            return error(400, f"Invalid value: '{size}'.", code="invalid_value", param="size")
        for part in seen["files"]:
            with Image.open(io.BytesIO(part["data"])) as reference:
                if "x".join(map(str, reference.size)) != size:
                    return error(400, "Inpaint image must match the requested width and height")
        video = Video(f"video_{uuid.uuid4().hex}", model, str(params.get("prompt")), seconds, size,
                      int(time.time()))
        self.videos[video.id] = video
        return JSONResponse(video.public())

    async def _video(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        video = self.videos.get(request.path_params["video_id"])
        if request.method == "DELETE":
            self.deletes.append(request.path_params["video_id"])
            if video is None:
                return error(404, "Video not found.", code="not_found")
            if video.status not in ("completed", "failed"):
                return error(400, "Only completed or failed videos can be deleted.")
            del self.videos[video.id]
            return JSONResponse({"id": video.id, "object": "video.deleted", "deleted": True})
        self.polls += 1
        if self.hang_poll:
            await asyncio.sleep(3600)
        if self.malformed_polls > 0:
            self.malformed_polls -= 1
            return Response('{"id": "video_', media_type="application/json")
        if video is None:
            return error(404, "Video not found.", code="not_found")
        self._advance(video)
        return JSONResponse(video.public())

    def _advance(self, video: Video) -> None:
        if video.status in ("completed", "failed"):
            return
        video.polls += 1
        if video.polls <= self.pending_polls:
            return
        if video.polls <= self.pending_polls + self.running_polls:
            video.status = "in_progress"
            video.progress = min(99, 100 * video.polls // (self.running_polls + 2))
            return
        if self.video_outcome == "completed":
            video.status, video.progress = "completed", 100
            video.completed_at = video.created_at + 42
            video.expires_at = time.time() + self.content_ttl
        elif self.video_outcome == "moderated":
            video.status = "failed"
            video.error = {"code": "moderation_blocked", "message": "The video was blocked by moderation."}
        else:
            video.status = "failed"
            video.error = {"code": "internal_error", "message": "Video generation failed."}

    async def _content(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        self.requests.append({"method": "GET", "path": request.url.path, "headers": dict(request.headers)})
        if self.content_errors > 0:
            self.content_errors -= 1
            return error(502, "Bad gateway.", "server_error")
        video = self.videos.get(request.path_params["video_id"])
        if video is None or video.status != "completed":
            return error(404, "Video is not ready or does not exist.", code="not_found")
        if video.expires_at is not None and video.expires_at < time.time():
            return error(404, "The video content has expired.", code="not_found")
        return Response(self.mp4, media_type="video/mp4")
