"""A small BytePlus ModelArk (Ark v3) server: Seedream images and Seedance video tasks.

Same paths, bearer-key check, JSON shapes and status values as the real API; the
switches below make it misbehave the ways the real one does.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, image_bytes, mp4_bytes

HOST = "ark.fake-byteplus.test"
CDN_HOST = "cdn.fake-byteplus.test"


#: The model ids ModelArk serves that the catalogue and the tests name
#: (https://docs.byteplus.com/en/docs/ModelArk/1330310, read 2026-12-02). Any other id is
#: refused as the real service does: 404 InvalidEndpointOrModel.NotFound.
SERVED_MODELS = frozenset({
    "seedream-4-0-250828", "seedream-4-5-251128", "seedream-3-0-t2i-250415",
    "seedance-1-0-pro-250528", "seedance-1-0-lite-t2v-250428", "seedance-1-0-lite-i2v-250428",
})

def ark_error(status: int, code: str, message: str, type_: str = "BadRequest",
              headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": f"{message} Request id: 0217fake", "param": "", "type": type_}}
    return JSONResponse(body, status_code=status, headers=headers)


# What each Seedream generation accepts as ``size``: named presets, and the range of "WxH".
# Seedream 3.0 bounds each side to 512..2048; 4.x bounds the total pixels (and the shape).
SEEDREAM_SIZES: dict[str, tuple[set[str], tuple[int, int] | None, tuple[int, int] | None]] = {
    # model prefix: (presets, (min side, max side), (min pixels, max pixels))
    "seedream-3-0": (set(), (512, 2048), None),
    "seedream-4-0": ({"1K", "2K", "4K"}, None, (1280 * 720, 4096 * 4096)),
    "seedream-4-5": ({"2K", "4K"}, None, (2560 * 1440, 4096 * 4096)),
}


def size_problem(model: str, size: Any) -> str | None:
    """Why Ark would refuse this ``size`` for this model, or None."""
    rule = next((r for prefix, r in SEEDREAM_SIZES.items() if model.startswith(prefix)), None)
    if rule is None or size is None:
        return None
    presets, sides, pixels = rule
    if size in presets:
        return None
    try:
        width, height = (int(v) for v in str(size).lower().split("x"))
    except ValueError:
        return f"size {size!r} is neither WxH nor one of {sorted(presets)}"
    if sides is not None and not all(sides[0] <= v <= sides[1] for v in (width, height)):
        return f"each side of size must be within [{sides[0]}, {sides[1]}], got {size}"
    if pixels is not None and not pixels[0] <= width * height <= pixels[1]:
        return f"the total pixels of size must be within [{pixels[0]}, {pixels[1]}], got {size}"
    if not 1 / 16 <= width / height <= 16:
        return f"the aspect ratio of size must be within [1/16, 16], got {size}"
    return None


@dataclass
class SeenCall:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeBytePlus:
    api_key: str = "ark-test-key"
    served_models: frozenset[str] = SERVED_MODELS  # ids the provider serves
    # slow jobs: a task is queued for this many polls, then running for this many
    queued_polls: int = 0
    running_polls: int = 0
    fail_submit: int = 0  # answer 500 to this many submits first
    rate_limit: int = 0  # answer 429 to this many requests (submit or poll) first
    retry_after: str = "0"
    hang_submit: bool = False  # never answer a submit
    hang_polls: int = 0  # never answer this many polls
    malformed: str = ""  # "submit" or "poll": answer broken JSON there
    moderation: str = ""  # "input": 400 on submit; "output": refused after generation
    account_overdue: bool = False  # 403 AccountOverdueError on submit
    task_error: str = ""  # a failed task with this error code
    output_ttl: float = 3600.0  # seconds the CDN serves a generated file

    calls: list[SeenCall] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancel_calls: list[str] = field(default_factory=list)
    cdn: FileHost = field(default_factory=lambda: FileHost(f"https://{CDN_HOST}"))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/api/v3/images/generations", self.images, methods=["POST"]),
                Route("/api/v3/contents/generations/tasks", self.create_task, methods=["POST"]),
                Route("/api/v3/contents/generations/tasks/{task_id}", self.get_task, methods=["GET"]),
                Route("/api/v3/contents/generations/tasks/{task_id}", self.delete_task, methods=["DELETE"]),
            ]
        )
        self.cdn_app = Starlette(routes=[Route("/files/{name}", self.cdn.serve)])

    def install(self, network: Any) -> None:
        network.add(HOST, self.app)
        network.add(CDN_HOST, self.cdn_app)

    def submits(self) -> list[SeenCall]:
        return [c for c in self.calls if c.method == "POST"]

    # ----------------------------------------------------------------- helpers

    async def _gate(self, request: Request, kind: str) -> Response | None:
        """Record the call and apply auth and the failure switches shared by all routes."""
        body = None
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return ark_error(400, "InvalidParameter", "The request body is not valid JSON.")
        self.calls.append(SeenCall(request.method, request.url.path, dict(request.headers), body))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return ark_error(401, "AuthenticationError", "The API key in the request is missing or invalid.",
                             "Unauthorized")
        if kind == "submit" and isinstance(body, dict) and body.get("model") not in self.served_models:
            model = body.get("model")
            return ark_error(404, "InvalidEndpointOrModel.NotFound",
                             f"The model or endpoint {model} does not exist or you do not have access to it.",
                             "NotFound")
        if self.rate_limit > 0:
            self.rate_limit -= 1
            return ark_error(429, "RateLimitExceeded.EndpointRPMExceeded", "Too many requests.",
                             "TooManyRequests", headers={"Retry-After": self.retry_after})
        if kind == "submit":
            if self.hang_submit:
                await asyncio.sleep(3600)
            if self.fail_submit > 0:
                self.fail_submit -= 1
                return ark_error(500, "InternalServiceError", "The service encountered an error.",
                                 "InternalServerError")
            if self.account_overdue:
                return ark_error(403, "AccountOverdueError", "Your account has an overdue balance.",
                                 "Forbidden")
            if self.malformed == "submit":
                return Response('{"id": "cgt-', media_type="application/json")
            if self.moderation == "input":
                return ark_error(400, "InputTextSensitiveContentDetected",
                                 "The input text may contain sensitive information.")
        if kind == "poll":
            if self.hang_polls > 0:
                self.hang_polls -= 1
                await asyncio.sleep(3600)
            if self.malformed == "poll":
                self.malformed = ""  # once: the next poll answers properly
                return Response("<html>502 Bad Gateway</html>", media_type="text/html")
        return None

    # ------------------------------------------------------------------ routes

    async def images(self, request: Request) -> Response:
        if (refused := await self._gate(request, "submit")) is not None:
            return refused
        if self.moderation == "output":
            return ark_error(400, "OutputImageSensitiveContentDetected",
                             "The generated image may contain sensitive information.")
        body = self.calls[-1].body
        problem = size_problem(str(body.get("model")), body.get("size"))
        if problem is not None:
            return ark_error(400, "InvalidParameter",
                             f"The parameter `size` specified in the request is not valid: {problem}.")
        self.cdn.ttl_seconds = self.output_ttl
        item: dict[str, Any] = {"size": body.get("size", "2048x2048")}
        if body.get("response_format") == "b64_json":
            item["b64_json"] = base64.b64encode(image_bytes("jpeg")).decode()
        else:
            item["url"] = self.cdn.publish(image_bytes("jpeg"), "jpeg")
        return JSONResponse({"model": body.get("model"), "created": int(time.time()), "data": [item],
                             "usage": {"generated_images": 1, "output_tokens": 16384,
                                       "total_tokens": 16384}})

    async def create_task(self, request: Request) -> Response:
        if (refused := await self._gate(request, "submit")) is not None:
            return refused
        body = self.calls[-1].body
        task_id = f"cgt-20250101{next(self._ids):06d}-fake"
        now = int(time.time())
        self.tasks[task_id] = {"body": body, "polls": 0, "cancelled": False, "created_at": now}
        return JSONResponse({"id": task_id})

    def _status(self, task: dict[str, Any]) -> str:
        if task["cancelled"]:
            return "cancelled"
        if task["polls"] <= self.queued_polls:
            return "queued"
        if task["polls"] <= self.queued_polls + self.running_polls:
            return "running"
        return "failed" if self.moderation == "output" or self.task_error else "succeeded"

    async def get_task(self, request: Request) -> Response:
        if (refused := await self._gate(request, "poll")) is not None:
            return refused
        task = self.tasks.get(request.path_params["task_id"])
        if task is None:
            return ark_error(404, "ResourceNotFound", "The specified task is not found.", "NotFound")
        task["polls"] += 1
        status = self._status(task)
        body = task["body"]
        answer: dict[str, Any] = {
            "id": request.path_params["task_id"],
            "model": body["model"],
            "status": status,
            "error": None,
            "created_at": task["created_at"],
            "updated_at": task["created_at"] + 7,
            "seed": body.get("seed", 11),
            "resolution": body.get("resolution", "720p"),
            "ratio": body.get("ratio", "16:9"),
            "duration": body.get("duration", 5),
            "framespersecond": 24,
        }
        if status == "succeeded":
            if "url" not in task:
                self.cdn.ttl_seconds = self.output_ttl
                task["url"] = self.cdn.publish(mp4_bytes(), "mp4")
            answer["content"] = {"video_url": task["url"]}
            answer["usage"] = {"completion_tokens": 108900, "total_tokens": 108900}
        elif status == "failed":
            code = "OutputVideoSensitiveContentDetected" if self.moderation == "output" else self.task_error
            answer["error"] = {"code": code, "message": "The task failed. Request id: 0217fake"}
        return JSONResponse(answer)

    async def delete_task(self, request: Request) -> Response:
        if (refused := await self._gate(request, "cancel")) is not None:
            return refused
        task_id = request.path_params["task_id"]
        self.cancel_calls.append(task_id)
        task = self.tasks.get(task_id)
        if task is None:
            return ark_error(404, "ResourceNotFound", "The specified task is not found.", "NotFound")
        status = self._status(task)
        if status == "queued":
            task["cancelled"] = True
            return Response(status_code=200)
        if status in ("running", "cancelled"):
            return ark_error(409, "OperationDenied.InvalidState",
                             f"A task in status {status} cannot be cancelled or deleted.", "Conflict")
        del self.tasks[task_id]  # a finished task: DELETE removes its record
        return Response(status_code=200)
