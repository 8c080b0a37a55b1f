"""A small Alibaba Cloud Model Studio (DashScope) server: Wan tasks and synchronous Qwen-Image.

Same paths, bearer-key check, ``X-DashScope-Async`` rule, JSON shapes and status
values as the real API; the switches below make it misbehave the ways the real one does.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, mp4_bytes, png_bytes

HOST = "dashscope.fake-alibaba.test"
CDN_HOST = "dashscope-result.fake-alibaba.test"
ASYNC_SERVICES = (
    "text2image/image-synthesis",
    "image2image/image-synthesis",
    "video-generation/video-synthesis",
    "image2video/video-synthesis",
)


#: The Model Studio model ids the catalogue and the tests name
#: (https://www.alibabacloud.com/help/en/model-studio/models, read 2026-12-02). Any other id is
#: refused as DashScope does: 400 InvalidParameter "Model not exist.".
SERVED_MODELS = frozenset({
    "qwen-image-plus", "qwen-image", "wan2.5-t2i-preview", "wan2.5-t2v-preview", "wan2.2-t2v-plus",
    "wan2.5-i2v-preview", "wan2.2-t2i-flash", "wan2.2-i2v-plus", "qwen-image-edit", "wan2.1-kf2v-plus",
    "wan2.2-i2v-flash", "wan2.2-t2i-plus", "wan2.5-i2i-preview",
})

def ds_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"request_id": str(uuid.uuid4()), "code": code, "message": message},
                        status_code=status, headers=headers)


def _when(base: datetime, seconds: float) -> str:
    return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass
class SeenCall:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeDashScope:
    api_key: str = "sk-test-key"
    served_models: frozenset[str] = SERVED_MODELS  # ids the provider serves
    queued_polls: int = 0  # polls answered PENDING
    running_polls: int = 0  # then polls answered RUNNING
    fail_submit: int = 0  # answer 500 to this many submits first
    rate_limit: int = 0  # answer 429 to this many requests (submit or poll) first
    retry_after: str = "0"
    hang_submit: bool = False
    hang_polls: int = 0  # never answer this many polls
    malformed: str = ""  # "submit" or "poll" (the latter once)
    moderation: str = ""  # "input": 400 on submit; "output": the task (or one image) is refused
    arrearage: bool = False  # 400 Arrearage on submit
    task_error: str = ""  # a FAILED task with this code
    output_ttl: float = 3600.0

    calls: list[SeenCall] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancel_calls: list[str] = field(default_factory=list)
    cdn: FileHost = field(default_factory=lambda: FileHost(f"https://{CDN_HOST}"))

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/api/v1/services/aigc/multimodal-generation/generation", self.multimodal,
                      methods=["POST"]),
                Route("/api/v1/services/aigc/{group}/{service}", self.create_task, methods=["POST"]),
                Route("/api/v1/tasks/{task_id}", self.get_task, methods=["GET"]),
                Route("/api/v1/tasks/{task_id}/cancel", self.cancel_task, methods=["POST"]),
            ]
        )
        self.cdn_app = Starlette(routes=[Route("/files/{name}", self.cdn.serve)])

    def install(self, network: Any) -> None:
        network.add(HOST, self.app)
        network.add(CDN_HOST, self.cdn_app)

    def submits(self) -> list[SeenCall]:
        return [c for c in self.calls if c.method == "POST" and not c.path.endswith("/cancel")]

    def polls(self) -> list[SeenCall]:
        return [c for c in self.calls if c.method == "GET"]

    # ----------------------------------------------------------------- helpers

    async def _gate(self, request: Request, kind: str) -> Response | None:
        body = None
        if request.method == "POST" and kind == "submit":
            try:
                body = await request.json()
            except ValueError:
                return ds_error(400, "InvalidParameter", "The request body is not valid JSON.")
        self.calls.append(SeenCall(request.method, request.url.path, dict(request.headers), body))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return ds_error(401, "InvalidApiKey", "Invalid API-key provided.")
        if kind == "submit" and isinstance(body, dict) and body.get("model") not in self.served_models:
            return ds_error(400, "InvalidParameter", "Model not exist.")
        if self.rate_limit > 0:
            self.rate_limit -= 1
            message = "Requests rate limit exceeded, please try again later."
            return ds_error(429, "Throttling.RateQuota", message, headers={"Retry-After": self.retry_after})
        if kind == "submit":
            if self.hang_submit:
                await asyncio.sleep(3600)
            if self.fail_submit > 0:
                self.fail_submit -= 1
                return ds_error(500, "InternalError", "An internal error has occured, try again later.")
            if self.arrearage:
                return ds_error(400, "Arrearage",
                                "Access denied, please make sure your account is in good standing.")
            if self.malformed == "submit":
                return Response('{"output": {"task_id": ', media_type="application/json")
            if self.moderation == "input":
                return ds_error(400, "DataInspectionFailed", "Input data may contain inappropriate content.")
        if kind == "poll":
            if self.hang_polls > 0:
                self.hang_polls -= 1
                await asyncio.sleep(3600)
            if self.malformed == "poll":
                self.malformed = ""
                return Response("<html>502 Bad Gateway</html>", media_type="text/html")
        return None

    def _publish(self, data: bytes, ext: str) -> str:
        self.cdn.ttl_seconds = self.output_ttl
        return self.cdn.publish(data, ext)

    # ------------------------------------------------------------------ routes

    async def multimodal(self, request: Request) -> Response:
        if (refused := await self._gate(request, "submit")) is not None:
            return refused
        if self.moderation == "output":
            return ds_error(400, "DataInspectionFailed", "Output data may contain inappropriate content.")
        body = self.calls[-1].body
        n = int(body.get("parameters", {}).get("n", 1))
        content = [{"image": self._publish(png_bytes(), "png")} for _ in range(n)]
        return JSONResponse({
            "output": {"choices": [{"finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]},
            "usage": {"width": 1328, "height": 1328, "image_count": n},
            "request_id": str(uuid.uuid4()),
        })

    async def create_task(self, request: Request) -> Response:
        service = f"{request.path_params['group']}/{request.path_params['service']}"
        if service not in ASYNC_SERVICES:
            return ds_error(404, "NotFound", "Not found!")
        if request.headers.get("x-dashscope-async") != "enable":
            self.calls.append(SeenCall("POST", request.url.path, dict(request.headers), None))
            return ds_error(403, "AccessDenied", "current user api does not support synchronous calls")
        if (refused := await self._gate(request, "submit")) is not None:
            return refused
        task_id = str(uuid.uuid4())
        self.tasks[task_id] = {"body": self.calls[-1].body, "service": service, "polls": 0,
                               "canceled": False, "submitted": datetime.now()}
        return JSONResponse({"output": {"task_status": "PENDING", "task_id": task_id},
                             "request_id": str(uuid.uuid4())})

    def _status(self, task: dict[str, Any]) -> str:
        if task["canceled"]:
            return "CANCELED"
        if task["polls"] <= self.queued_polls:
            return "PENDING"
        if task["polls"] <= self.queued_polls + self.running_polls:
            return "RUNNING"
        if self.task_error or (self.moderation == "output" and task["service"].endswith("video-synthesis")):
            return "FAILED"
        return "SUCCEEDED"

    async def get_task(self, request: Request) -> Response:
        if (refused := await self._gate(request, "poll")) is not None:
            return refused
        task_id = request.path_params["task_id"]
        task = self.tasks.get(task_id)
        if task is None:
            return JSONResponse({"request_id": str(uuid.uuid4()),
                                 "output": {"task_id": task_id, "task_status": "UNKNOWN"}})
        task["polls"] += 1
        status = self._status(task)
        t0 = task["submitted"]
        output: dict[str, Any] = {"task_id": task_id, "task_status": status, "submit_time": _when(t0, 0)}
        answer: dict[str, Any] = {"request_id": str(uuid.uuid4()), "output": output}
        if status in ("RUNNING", "SUCCEEDED", "FAILED"):
            output["scheduled_time"] = _when(t0, 1)
        if status == "FAILED":
            output["end_time"] = _when(t0, 2)
            output["code"] = self.task_error or "DataInspectionFailed"
            output["message"] = "Output data may contain inappropriate content." if not self.task_error \
                else "The task failed."
        elif status == "SUCCEEDED":
            output["end_time"] = _when(t0, 9.5)
            if "result" not in task:
                task["result"] = self._result(task)
            output.update(task["result"])
            if "video_url" in task["result"]:
                answer["usage"] = {"video_duration": 5, "video_count": 1}
            else:
                answer["usage"] = {"image_count": len(task["result"]["results"])}
        return JSONResponse(answer)

    def _result(self, task: dict[str, Any]) -> dict[str, Any]:
        prompt = task["body"]["input"].get("prompt", "")
        if task["service"].endswith("video-synthesis"):
            return {"video_url": self._publish(mp4_bytes(), "mp4"), "orig_prompt": prompt,
                    "actual_prompt": prompt + " (extended)"}
        n = int(task["body"].get("parameters", {}).get("n", 1))
        results: list[dict[str, Any]] = [
            {"orig_prompt": prompt, "actual_prompt": prompt, "url": self._publish(png_bytes(), "png")}
            for _ in range(n)
        ]
        if self.moderation == "output":  # the service refuses one image of the batch
            results[-1] = {"code": "DataInspectionFailed",
                           "message": "Output data may contain inappropriate content."}
        ok = sum(1 for r in results if "url" in r)
        return {"results": results, "task_metrics": {"TOTAL": n, "SUCCEEDED": ok, "FAILED": n - ok}}

    async def cancel_task(self, request: Request) -> Response:
        if (refused := await self._gate(request, "cancel")) is not None:
            return refused
        task_id = request.path_params["task_id"]
        self.cancel_calls.append(task_id)
        task = self.tasks.get(task_id)
        if task is None or self._status(task) != "PENDING":
            return ds_error(400, "UnsupportedOperation",
                            "Failed to cancel the task, please confirm if the task is in PENDING status.")
        task["canceled"] = True
        return JSONResponse({"request_id": str(uuid.uuid4())})
