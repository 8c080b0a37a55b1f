"""A fake Replicate API: the prediction endpoints, their JSON, auth and failure modes.

Wire format as the real service: ``Authorization: Bearer <token>`` (else a 401 problem
document), official models at ``POST /v1/models/{owner}/{name}/predictions``, pinned
versions at ``POST /v1/predictions``, predictions read at ``GET /v1/predictions/{id}``
and canceled at ``POST /v1/predictions/{id}/cancel``; statuses starting -> processing
-> succeeded | failed | canceled; outputs are URLs on a separate file host whose links
expire.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, image_bytes, mp4_bytes

API_HOST = "api.replicate.com"
CDN_HOST = "replicate.delivery"
NSFW_ERROR = "NSFW content detected. Try running it again, or try a different prompt."


#: The official models the fake serves: those the catalogue and the tests name, each
#: listed on its model page (https://replicate.com/<owner>/<name>, read 2026-12-02).
SERVED_MODELS = frozenset({
    "black-forest-labs/flux-schnell", "black-forest-labs/flux-dev", "black-forest-labs/flux-1.1-pro",
    "black-forest-labs/flux-1.1-pro-ultra", "black-forest-labs/flux-kontext-pro",
    "black-forest-labs/flux-kontext-max", "black-forest-labs/flux-2-pro", "bytedance/seedream-4",
    "bytedance/seedream-3", "google/nano-banana", "qwen/qwen-image", "runwayml/gen4-image",
    "ideogram-ai/ideogram-v3-turbo", "recraft-ai/recraft-v3", "bytedance/seedance-1-pro",
    "bytedance/seedance-1-lite", "google/veo-3", "google/veo-3-fast", "kwaivgi/kling-v2.1-master",
    "minimax/hailuo-02",
})


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"title": title, "detail": detail, "status": status, **extra}, status_code=status)


@dataclass
class FakeReplicate:
    token: str = "r8_fake_token"
    served_models: frozenset[str] = SERVED_MODELS  # ids the provider serves
    # Lifecycle: this many polls answer "starting", then this many "processing", then done.
    queued_polls: int = 0
    running_polls: int = 0
    # Failure switches.
    submit_error_status: int | None = None  # e.g. 500: every create answers this
    rate_limited_submits: int = 0  # this many creates answer 429 with Retry-After
    retry_after: str = "2"
    hang_submits: int = 0  # this many creates never answer
    hang_polls: int = 0  # this many polls never answer
    malformed_submits: int = 0
    malformed_polls: int = 0
    moderate: bool = False  # predictions fail with the safety checker's message
    fail_error: str | None = None  # predictions fail with this error
    video: bool = False  # outputs are MP4 files
    single_output: bool = False  # output is one URL string rather than a list
    output_ttl_seconds: float = 3600.0
    # What happened.
    created: list[dict[str, Any]] = field(default_factory=list)  # {"path", "body"}
    canceled: list[str] = field(default_factory=list)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: int = 0

    def __post_init__(self) -> None:
        self.files = FileHost(f"https://{CDN_HOST}", ttl_seconds=self.output_ttl_seconds)
        self.app = Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions/{id}", self._get, methods=["GET"]),
                Route("/v1/predictions/{id}/cancel", self._cancel, methods=["POST"]),
            ]
        )
        self.cdn = Starlette(routes=[Route("/files/{name}", self.files.serve)])

    def install(self, network: Any) -> None:
        network.add(API_HOST, self.app)
        network.add(CDN_HOST, self.cdn)

    # -- handlers --------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return None

    async def _create(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        if self.hang_submits > 0:
            self.hang_submits -= 1
            await asyncio.sleep(3600)
        if self.rate_limited_submits > 0:
            self.rate_limited_submits -= 1
            detail = f"Request was throttled. Your rate limit resets in ~{self.retry_after}s."
            response = problem(429, "Request was throttled", detail)
            response.headers["Retry-After"] = self.retry_after
            return response
        if self.submit_error_status is not None:
            titles = {402: "Insufficient credit", 503: "Service Unavailable"}
            title = titles.get(self.submit_error_status, "Internal Server Error")
            return problem(self.submit_error_status, title, "Something went wrong.")
        if self.malformed_submits > 0:
            self.malformed_submits -= 1
            return Response(b'{"id": "oops', status_code=201, media_type="application/json")
        official = "owner" in request.path_params
        if official:
            name = f"{request.path_params['owner']}/{request.path_params['name']}"
            if name not in self.served_models:
                # An unknown (or deleted) official model is a plain 404 problem document
                # (https://replicate.com/docs/reference/http#models.predictions.create, read 2026-12-02).
                return problem(404, "Not found", "The requested resource could not be found.")
        body = orjson.loads(await request.body())
        if not isinstance(body.get("input"), dict) or (not official and not body.get("version")):
            return problem(422, "Input validation failed", "- input: Invalid type. Expected: object")
        self.created.append({"path": request.url.path, "body": body})
        pid = secrets.token_hex(13)[:26]
        base = f"https://{API_HOST}/v1/predictions/{pid}"
        model = (
            f"{request.path_params['owner']}/{request.path_params['name']}" if official else "someone/model"
        )
        prediction = {
            "id": pid,
            "model": model,
            "version": "hidden" if official else body["version"],
            "input": body["input"],
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "starting",
            "created_at": "2026-01-01T00:00:00.000Z",
            "urls": {"cancel": f"{base}/cancel", "get": base, "web": f"https://replicate.com/p/{pid}"},
            "_polls": 0,
        }
        self.predictions[pid] = prediction
        return JSONResponse(self._public(prediction), status_code=201)

    async def _get(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        self.polls += 1
        if self.hang_polls > 0:
            self.hang_polls -= 1
            await asyncio.sleep(3600)
        if self.malformed_polls > 0:
            self.malformed_polls -= 1
            return Response(b"<html>502 Bad Gateway</html>", status_code=200, media_type="application/json")
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return problem(404, "Not found", "The requested resource could not be found.")
        self._advance(prediction)
        return JSONResponse(self._public(prediction))

    async def _cancel(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return problem(404, "Not found", "The requested resource could not be found.")
        self.canceled.append(prediction["id"])
        if prediction["status"] in ("starting", "processing"):
            prediction["status"] = "canceled"
        return JSONResponse(self._public(prediction))

    # -- behaviour -------------------------------------------------------------------

    @staticmethod
    def _public(prediction: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in prediction.items() if not k.startswith("_")}

    def _advance(self, p: dict[str, Any]) -> None:
        if p["status"] not in ("starting", "processing"):
            return
        p["_polls"] += 1
        if p["_polls"] <= self.queued_polls:
            return
        if p["_polls"] <= self.queued_polls + self.running_polls:
            p["status"] = "processing"
            p["started_at"] = "2026-01-01T00:00:01.000Z"
            return
        p["completed_at"] = "2026-01-01T00:00:03.000Z"
        if self.moderate or self.fail_error:
            p["status"] = "failed"
            p["error"] = NSFW_ERROR if self.moderate else self.fail_error
            return
        p["status"] = "succeeded"
        p["metrics"] = {"predict_time": 1.25, "total_time": 2.5}
        if self.video:
            urls = [self.files.publish(mp4_bytes(), "mp4")]
        else:
            fmt = str(p["input"].get("output_format") or "webp")
            # Seedream's max_images counts only in group mode ("auto"); it makes one image otherwise.
            group = p["input"].get("sequential_image_generation") == "auto"
            count = int(p["input"].get("num_outputs") or (group and p["input"].get("max_images")) or 1)
            urls = [self.files.publish(image_bytes(fmt), fmt) for _ in range(count)]
        p["output"] = urls[0] if self.single_output else urls
