"""A small Runway API: task creation on the three generation endpoints, task polls, cancel.

Same wire format as the real service: ``Authorization: Bearer`` plus a required
``X-Runway-Version`` header, ``{"error": ...}`` bodies (with zod-style ``issues`` on
validation failures), ``{"id"}`` on creation, tasks that move PENDING -> RUNNING ->
SUCCEEDED | FAILED | CANCELLED with ``output`` URLs on a separate CDN host that expire,
and ``DELETE /v1/tasks/{id}`` to cancel.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, image_bytes, mp4_bytes
from tests.fakes.network import FakeNetwork

HOST = "api.runway.test"
CDN_HOST = "cdn.runway.test"
VERSION = "2024-11-06"


#: The models Runway's API serves that the catalogue and the tests name
#: (https://docs.dev.runwayml.com/api/, read 2026-12-02). Another ``model`` fails the body's
#: validation: 400 {"error": "Validation of body failed", "issues": [...]}.
SERVED_MODELS = frozenset({
    "gen4_image", "gen4_image_turbo", "gen4_turbo", "gen4_aleph", "veo3", "veo3.1", "gen3a_turbo",
    "gemini_image3_pro",
})

@dataclass
class Task:
    id: str
    endpoint: str
    body: dict[str, Any]
    polls: int = 0
    status: str = "PENDING"


@dataclass
class SeenCall:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeRunway:
    key: str = "key_runway_test"
    served_models: frozenset[str] = SERVED_MODELS  # ids the provider serves

    # switches
    queued_polls: int = 0  # polls answered PENDING ...
    throttled_polls: int = 0  # ... then THROTTLED ...
    running_polls: int = 0  # ... then RUNNING with progress, then the outcome
    failure_code: str = ""  # non-empty: tasks end FAILED with this failureCode
    cancel_upstream: bool = False  # tasks end CANCELLED (canceled on Runway's side)
    fail_submit: int = 0  # answer 500 to this many submissions first
    fail_nth_submit: int = 0  # answer 500 to this (1-based) submission only
    rate_limit_submit: int = 0  # answer 429 with Retry-After to this many submissions
    retry_after: int = 3
    out_of_credits: bool = False  # 400 "not enough credits" on submit
    hang_submit: bool = False
    hang_poll: bool = False
    malformed_polls: int = 0  # garbled JSON to this many polls
    poll_errors: int = 0  # 502 to this many polls
    forget_canceled: bool = True  # canceled tasks 404 afterwards, as the real API does

    calls: list[SeenCall] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    cancels: list[str] = field(default_factory=list)
    polls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = FileHost(f"https://{CDN_HOST}", ttl_seconds=24 * 3600.0)
        self.app = Starlette(
            routes=[
                Route("/v1/image_to_video", self._create, methods=["POST"]),
                Route("/v1/text_to_video", self._create, methods=["POST"]),
                Route("/v1/text_to_image", self._create, methods=["POST"]),
                Route("/v1/tasks/{task_id}", self._get, methods=["GET"]),
                Route("/v1/tasks/{task_id}", self._delete, methods=["DELETE"]),
            ]
        )
        self.cdn = Starlette(routes=[Route("/files/{name}", self.files.serve, methods=["GET"])])

    def mount(self, network: FakeNetwork) -> None:
        network.add(HOST, self.app)
        network.add(CDN_HOST, self.cdn)

    def submissions(self) -> list[SeenCall]:
        return [c for c in self.calls if c.method == "POST"]

    def _refusal(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return JSONResponse({"error": "Incorrect hostname or API key."}, status_code=401)
        if request.headers.get("x-runway-version") != VERSION:
            return JSONResponse(
                {"error": "The X-Runway-Version header is missing or names an unknown version."},
                status_code=400,
            )
        return None

    async def _create(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = await request.json()
        self.calls.append(SeenCall("POST", request.url.path, dict(request.headers), body))
        if self.hang_submit:
            await asyncio.sleep(3600)
        if self.fail_submit > 0 or self.fail_nth_submit == len(self.submissions()):
            self.fail_submit = max(0, self.fail_submit - 1)
            return JSONResponse({"error": "Internal server error"}, status_code=500)
        if self.rate_limit_submit > 0:
            self.rate_limit_submit -= 1
            return JSONResponse(
                {"error": "You have exceeded the rate limit."},
                status_code=429,
                headers={"Retry-After": str(self.retry_after)},
            )
        if self.out_of_credits:
            message = "You do not have enough credits to run this task."
            return JSONResponse({"error": message}, status_code=400)
        issues = self._issues(request.url.path, body)
        if "model" in body and body["model"] not in self.served_models:
            issues.append({"path": ["model"], "message": f"Invalid enum value. Received '{body['model']}'"})
        if issues:
            return JSONResponse({"error": "Validation of body failed", "issues": issues}, status_code=400)
        task = Task(str(uuid.uuid4()), request.url.path, body)
        self.tasks[task.id] = task
        return JSONResponse({"id": task.id})

    @staticmethod
    def _issues(path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        required = ["model", "ratio"]
        required.append("promptImage" if path == "/v1/image_to_video" else "promptText")
        return [
            {"code": "invalid_type", "expected": "string", "received": "undefined", "path": [name],
             "message": "Required"}
            for name in required
            if name not in body
        ]

    async def _get(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        self.polls.append(request.path_params["task_id"])
        if self.hang_poll:
            await asyncio.sleep(3600)
        if self.poll_errors > 0:
            self.poll_errors -= 1
            return Response("<html>502 Bad Gateway</html>", status_code=502, media_type="text/html")
        if self.malformed_polls > 0:
            self.malformed_polls -= 1
            return Response('{"id": "x", "status": "RUNN', media_type="application/json")
        task = self.tasks.get(request.path_params["task_id"])
        if task is None or (task.status == "CANCELLED" and self.forget_canceled):
            return JSONResponse({"error": "Task not found."}, status_code=404)
        answer: dict[str, Any] = {"id": task.id, "createdAt": "2025-01-01T00:00:00.000Z"}
        if task.status == "CANCELLED":
            return JSONResponse({**answer, "status": "CANCELLED"})
        task.polls += 1
        stages = [
            (self.queued_polls, "PENDING"),
            (self.throttled_polls, "THROTTLED"),
            (self.running_polls, "RUNNING"),
        ]
        seen = 0
        for count, status in stages:
            seen += count
            if task.polls <= seen:
                if status == "RUNNING":
                    answer["progress"] = round(task.polls / (seen + 1), 2)
                return JSONResponse({**answer, "status": status})
        if self.cancel_upstream:
            task.status = "CANCELLED"
            return JSONResponse({**answer, "status": "CANCELLED"})
        if self.failure_code:
            task.status = "FAILED"
            return JSONResponse(
                {**answer, "status": "FAILED", "failure": "The task could not be completed.",
                 "failureCode": self.failure_code}
            )
        task.status = "SUCCEEDED"
        if task.endpoint == "/v1/text_to_image":
            count = int(task.body.get("outputCount", 1))
            output = [self.files.publish(image_bytes("png"), "png") for _ in range(count)]
        else:
            output = [self.files.publish(mp4_bytes(), "mp4")]
        return JSONResponse({**answer, "status": "SUCCEEDED", "output": output})

    async def _delete(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        task_id = request.path_params["task_id"]
        self.calls.append(SeenCall("DELETE", request.url.path, dict(request.headers), None))
        self.cancels.append(task_id)
        task = self.tasks.get(task_id)
        if task is None or task.status == "CANCELLED":
            return JSONResponse({"error": "Task not found."}, status_code=404)
        if task.status in ("SUCCEEDED", "FAILED"):
            del self.tasks[task_id]  # a finished task is deleted
        else:
            task.status = "CANCELLED"
        return Response(status_code=204)
