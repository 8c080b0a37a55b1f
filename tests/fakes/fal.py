"""A fake fal queue: submit, status, result and cancel, with fal's JSON and failure modes.

Wire format as the real queue: ``Authorization: Key <key>`` (else 401 with a string
``detail``); ``POST /{endpoint id}`` enqueues; status, result and cancel live under the
*app* id only (``fal-ai/flux/dev`` -> ``fal-ai/flux/requests/...``), and the fake answers
404 on any other prefix so an adapter that keeps the sub-path fails here as it would
there. Statuses IN_QUEUE (202, with ``queue_position``) -> IN_PROGRESS (202) ->
COMPLETED (200); the result endpoint answers the model's output, or its error: a typed
``detail`` list for model errors, a string ``detail`` with ``error_type`` otherwise.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, image_bytes, mp4_bytes

QUEUE_HOST = "queue.fal.run"
CDN_HOST = "v3.fal.media"
NAMESPACES = ("workflows", "comfy")
OUT_OF_BALANCE = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
# Endpoints whose ``output_format`` is an enum without WebP: the real input schemas refuse
# anything else with a 422 (FLUX.1 and Qwen-Image take "jpeg" or "png" only).
OUTPUT_FORMATS = {
    "fal-ai/flux/schnell": ("jpeg", "png"),
    "fal-ai/flux/dev": ("jpeg", "png"),
    "fal-ai/flux-pro/v1.1": ("jpeg", "png"),
    "fal-ai/flux-pro/v1.1-ultra": ("jpeg", "png"),
    "fal-ai/qwen-image": ("jpeg", "png"),
}


def app_of(endpoint: str) -> str:
    parts = endpoint.strip("/").split("/")
    return "/".join(parts[:3] if parts[0] in NAMESPACES else parts[:2])


#: The endpoints fal serves that the catalogue and the tests name, each on its model page
#: (https://fal.ai/models/<endpoint>, read 2026-12-02). Submitting to another answers 404
#: {"detail": "Application not found"}.
SERVED_MODELS = frozenset({
    "fal-ai/flux/schnell", "fal-ai/flux/dev", "fal-ai/flux-pro/v1.1", "fal-ai/flux-pro/v1.1-ultra",
    "fal-ai/bytedance/seedream/v4/text-to-image", "fal-ai/bytedance/seedream/v4/edit",
    "fal-ai/bytedance/seedream/v3/text-to-image", "fal-ai/qwen-image", "fal-ai/ideogram/v3",
    "fal-ai/recraft/v3/text-to-image", "fal-ai/bytedance/seedance/v1/pro/text-to-video",
    "fal-ai/bytedance/seedance/v1/pro/image-to-video", "fal-ai/bytedance/seedance/v1/lite/text-to-video",
    "fal-ai/veo3", "fal-ai/veo3/image-to-video", "fal-ai/veo3/fast", "fal-ai/veo3/fast/image-to-video",
    "fal-ai/kling-video/v2.1/master/text-to-video", "fal-ai/wan-25-preview/text-to-video",
    "fal-ai/minimax/hailuo-02/standard/text-to-video", "fal-ai/minimax/hailuo-02/pro/text-to-video",
})

@dataclass
class FakeFal:
    key: str = "fal-key-id:fal-key-secret"
    served_models: frozenset[str] = SERVED_MODELS  # endpoints the provider serves
    queued_polls: int = 0  # polls answering IN_QUEUE
    running_polls: int = 0  # then polls answering IN_PROGRESS
    submit_error_status: int | None = None
    rate_limited_submits: int = 0
    retry_after: str = "2"
    hang_submits: int = 0
    hang_polls: int = 0
    malformed_submits: int = 0
    malformed_polls: int = 0
    moderate: bool = False  # the result is a 422 content_policy_violation
    fail_error: str | None = None  # the result is a 500 runner error with this detail
    nsfw_flags: list[bool] | None = None  # has_nsfw_concepts of image results
    out_of_balance: bool = False
    video: bool = False
    output_ttl_seconds: float = 3600.0
    submitted: list[dict[str, Any]] = field(default_factory=list)  # {"path", "body", "request_id"}
    canceled: list[str] = field(default_factory=list)
    status_paths: list[str] = field(default_factory=list)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.files = FileHost(f"https://{CDN_HOST}", ttl_seconds=self.output_ttl_seconds)
        self.app = Starlette(routes=[Route("/{path:path}", self._route, methods=["GET", "POST", "PUT"])])
        self.cdn = Starlette(routes=[Route("/files/{name}", self.files.serve)])

    def install(self, network: Any) -> None:
        network.add(QUEUE_HOST, self.app)
        network.add(CDN_HOST, self.cdn)

    # -- routing ---------------------------------------------------------------------

    async def _route(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Key {self.key}":
            return JSONResponse({"detail": "Invalid authentication credentials."}, status_code=401)
        path = request.path_params["path"].strip("/")
        if request.method == "POST" and "/requests/" not in f"/{path}/":
            if path not in self.served_models:
                return JSONResponse({"detail": "Application not found"}, status_code=404)
            return await self._submit(request, path)
        prefix, sep, rest = path.partition("/requests/")
        pieces = rest.split("/")
        req = self.requests.get(pieces[0]) if sep else None
        if req is None or req["app"] != prefix:
            return JSONResponse({"detail": "Request not found"}, status_code=404)
        if request.method == "GET" and pieces[1:] == ["status"]:
            self.status_paths.append(path)
            return await self._status(req)
        if request.method == "GET" and pieces[1:] == []:
            return self._result(req)
        if request.method == "PUT" and pieces[1:] == ["cancel"]:
            return self._cancel(req)
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)

    def _urls(self, req: dict[str, Any]) -> dict[str, str]:
        base = f"https://{QUEUE_HOST}/{req['app']}/requests/{req['id']}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    # -- handlers --------------------------------------------------------------------

    async def _submit(self, request: Request, endpoint: str) -> Response:
        if self.hang_submits > 0:
            self.hang_submits -= 1
            await asyncio.sleep(3600)
        if self.out_of_balance:
            return JSONResponse({"detail": OUT_OF_BALANCE}, status_code=403)
        if self.rate_limited_submits > 0:
            self.rate_limited_submits -= 1
            return JSONResponse(
                {"detail": "Too many requests"}, status_code=429, headers={"Retry-After": self.retry_after}
            )
        if self.submit_error_status is not None:
            return JSONResponse(
                {"detail": "Internal server error", "error_type": "internal_error"},
                status_code=self.submit_error_status,
            )
        if self.malformed_submits > 0:
            self.malformed_submits -= 1
            return Response(b"{'request_id': ", status_code=200, media_type="application/json")
        body = orjson.loads(await request.body())
        if not isinstance(body, dict) or not body.get("prompt"):
            detail = [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]
            return JSONResponse({"detail": detail}, status_code=422)
        allowed = OUTPUT_FORMATS.get(endpoint)
        fmt = body.get("output_format")
        if allowed is not None and fmt is not None and fmt not in allowed:
            expected = " or ".join(f"'{a}'" for a in allowed)
            refused: list[dict[str, Any]] = [
                {"loc": ["body", "output_format"], "msg": f"Input should be {expected}",
                 "type": "literal_error", "input": fmt, "ctx": {"expected": expected}}
            ]
            return JSONResponse({"detail": refused}, status_code=422)
        rid = str(uuid.uuid4())
        req = {"id": rid, "app": app_of(endpoint), "body": body, "polls": 0, "state": "IN_QUEUE"}
        self.requests[rid] = req
        self.submitted.append({"path": f"/{endpoint}", "body": body, "request_id": rid})
        return JSONResponse({"status": "IN_QUEUE", "request_id": rid, **self._urls(req), "queue_position": 0})

    async def _status(self, req: dict[str, Any]) -> Response:
        if self.hang_polls > 0:
            self.hang_polls -= 1
            await asyncio.sleep(3600)
        if self.malformed_polls > 0:
            self.malformed_polls -= 1
            return Response(b"upstream connect error", status_code=200, media_type="application/json")
        if req["state"] != "COMPLETED":
            req["polls"] += 1
            if req["polls"] <= self.queued_polls:
                req["state"] = "IN_QUEUE"
            elif req["polls"] <= self.queued_polls + self.running_polls:
                req["state"] = "IN_PROGRESS"
            else:
                req["state"] = "COMPLETED"
        common = {"request_id": req["id"], **self._urls(req), "logs": None}
        if req["state"] == "IN_QUEUE":
            position = max(0, self.queued_polls - req["polls"])
            return JSONResponse({"status": "IN_QUEUE", "queue_position": position, **common}, status_code=202)
        if req["state"] == "IN_PROGRESS":
            return JSONResponse({"status": "IN_PROGRESS", **common}, status_code=202)
        done = {"status": "COMPLETED", **common, "metrics": {"inference_time": 1.5}}
        if req.get("canceled"):
            done.update(error="Request was cancelled by the client.", error_type="client_cancelled")
        return JSONResponse(done)

    def _result(self, req: dict[str, Any]) -> Response:
        if req["state"] != "COMPLETED":
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400)
        if req.get("canceled"):
            return JSONResponse(
                {"detail": "Request was cancelled by the client.", "error_type": "client_cancelled"},
                status_code=499,
                headers={"X-Fal-Error-Type": "client_cancelled"},
            )
        if self.moderate:
            detail = [
                {
                    "loc": ["body", "prompt"],
                    "msg": "The content was flagged by a content checker.",
                    "type": "content_policy_violation",
                    "url": "https://docs.fal.ai/errors#content_policy_violation",
                    "input": req["body"].get("prompt"),
                }
            ]
            return JSONResponse({"detail": detail}, status_code=422, headers={"X-Fal-Retryable": "false"})
        if self.fail_error:
            return JSONResponse(
                {"detail": self.fail_error, "error_type": "runner_server_error"},
                status_code=500,
                headers={"X-Fal-Error-Type": "runner_server_error"},
            )
        if self.video:
            url = self.files.publish(mp4_bytes(), "mp4")
            return JSONResponse({"video": {"url": url, "content_type": "video/mp4", "file_name": "out.mp4"}})
        fmt = str(req["body"].get("output_format") or "jpeg").replace("jpeg", "jpg")
        fmt = fmt if fmt in ("jpg", "png", "webp") else "png"
        count = int(req["body"].get("num_images") or 1)
        images = [
            {
                "url": self.files.publish(image_bytes(fmt), fmt),
                "width": 64,
                "height": 64,
                "content_type": "image/jpeg" if fmt == "jpg" else f"image/{fmt}",
            }
            for _ in range(count)
        ]
        flags = self.nsfw_flags if self.nsfw_flags is not None else [False] * count
        return JSONResponse(
            {
                "images": images,
                "timings": {"inference": 1.2},
                "seed": req["body"].get("seed", 42),
                "has_nsfw_concepts": flags,
                "prompt": req["body"].get("prompt"),
            }
        )

    def _cancel(self, req: dict[str, Any]) -> Response:
        self.canceled.append(req["id"])
        if req["state"] == "COMPLETED":
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        req["state"] = "COMPLETED"
        req["canceled"] = True
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
