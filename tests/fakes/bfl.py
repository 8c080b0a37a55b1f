"""A fake Black Forest Labs API: ``POST /v1/<model>``, ``GET /v1/get_result``.

Same wire format as the real service: the ``x-key`` header (403 with FastAPI's
``{"detail": ...}`` body without it), ``{"id", "polling_url"}`` on submit with the polling
URL on a regional host, results with the real status strings, and samples served from
a separate delivery host at URLs that expire. BFL has no cancel endpoint, so neither
does this fake.

A task is only known at the exact ``polling_url`` it was handed out with: BFL asks
clients to poll that URL as given, not one rebuilt from the id or with another host
(https://help.bfl.ai/articles/9532536301-which-api-endpoint-should-i-use and
https://docs.bfl.ai/api_integration/integration_guidelines, read 2026-12-02). Any other
poll for it answers ``Task not found``, as a cluster that does not hold the task does.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, image_bytes
from tests.fakes.network import FakeNetwork

# The FLUX.1 endpoints' OutputFormat enum is "jpeg" | "png"; their width and height are
# multiples of 32 within 256..1440. FastAPI answers anything else with a 422.
FLUX1_MODELS = frozenset(
    {"flux-dev", "flux-pro", "flux-pro-1.1", "flux-pro-1.1-ultra", "flux-kontext-pro", "flux-kontext-max"}
)
FLUX1_OUTPUT_FORMATS = ("jpeg", "png")


def validation_errors(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """FastAPI's ``detail`` items for a body the real endpoint would refuse."""
    if model not in FLUX1_MODELS:
        return []
    errors: list[dict[str, Any]] = []
    fmt = body.get("output_format")
    if fmt is not None and fmt not in FLUX1_OUTPUT_FORMATS:
        errors.append({"type": "enum", "loc": ["body", "output_format"], "input": fmt,
                       "msg": "Input should be 'jpeg' or 'png'", "ctx": {"expected": "'jpeg' or 'png'"}})
    for side in ("width", "height"):
        value = body.get(side)
        if value is not None and (not isinstance(value, int) or value % 32 or not 256 <= value <= 1440):
            errors.append({"type": "value_error", "loc": ["body", side], "input": value,
                           "msg": "Value error, must be a multiple of 32 within 256..1440"})
    return errors


#: The endpoints BFL serves that the catalogue and the tests name (https://docs.bfl.ai, read
#: 2026-12-02). Any other ``POST /v1/<model>`` is FastAPI's 404 {"detail": "Not Found"}.
SERVED_MODELS = frozenset({
    "flux-dev", "flux-pro-1.1", "flux-pro-1.1-ultra", "flux-kontext-pro", "flux-kontext-max",
    "flux-2-pro", "flux-2-flex", "flux-pro", "flux-pro-1.0-fill", "flux-2-max", "flux-2-klein-9b",
})

def _where(url: str) -> tuple[str, str, list[tuple[str, str]]]:
    """A URL as a server reads it: host, path and decoded query parameters."""
    parts = urlsplit(url)
    return (parts.hostname or "", parts.path, sorted(parse_qsl(parts.query, keep_blank_values=True)))


@dataclass
class Task:
    id: str
    model: str
    body: dict[str, Any]
    polls: int = 0
    polling_url: str | None = None  # the only URL that knows the task, when one was handed out


@dataclass
class FakeBfl:
    host: str = "api.bfl.test"
    served_models: frozenset[str] = SERVED_MODELS  # ids the provider serves
    region_host: str = "api.us1.bfl.test"  # where polling_url points, as the global host does
    cdn_host: str = "delivery.bfl.test"
    key: str = "bfl-test-key"

    # switches
    pending_polls: int = 0  # polls answered Pending with no progress (queued) ...
    running_polls: int = 0  # ... then Pending with progress (running), then the outcome
    outcome: str = "Ready"  # or "Request Moderated", "Content Moderated", "Error", "Task not found"
    fail_submit: int = 0  # answer 500 to this many submissions
    rate_limit_submit: int = 0  # answer 429 with Retry-After to this many submissions ...
    rate_limit_after: int = 0  # ... once this many have been accepted (BFL caps active tasks)
    retry_after: int = 1
    out_of_credits: bool = False  # 402 on submit
    moderate_submit: bool = False  # 400 {"detail": "Request Moderated ..."} on submit
    hang_submit: bool = False
    hang_poll: bool = False
    malformed_polls: int = 0  # garbled JSON answers to this many polls
    poll_errors: int = 0  # 502 answers to this many polls
    omit_polling_url: bool = False
    # The polling URL handed out ({host}, {id}); BFL's own example is this one, but the
    # shape is BFL's to choose, which is why clients must not rebuild it.
    polling_url_template: str = "https://{host}/v1/get_result?id={id}"

    tasks: dict[str, Task] = field(default_factory=dict)
    submissions: list[dict[str, Any]] = field(default_factory=list)
    polls: list[str] = field(default_factory=list)  # host of each poll
    poll_urls: list[str] = field(default_factory=list)  # full URL of each poll

    def __post_init__(self) -> None:
        # Signed sample URLs live about ten minutes; tests shorten ``files.ttl_seconds``.
        self.files = FileHost(f"https://{self.cdn_host}", ttl_seconds=600.0)
        self.app = Starlette(
            routes=[
                Route("/v1/get_result", self._get_result, methods=["GET"]),
                Route("/v1/{model}", self._submit, methods=["POST"]),
            ]
        )
        self.cdn = Starlette(routes=[Route("/files/{name}", self.files.serve, methods=["GET"])])

    def mount(self, network: FakeNetwork) -> None:
        network.add(self.host, self.app)
        network.add(self.region_host, self.app)
        network.add(self.cdn_host, self.cdn)

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("x-key") == self.key

    async def _submit(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"detail": "Not authenticated - Invalid Authentication"}, status_code=403)
        if request.path_params["model"] not in self.served_models:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        self.submissions.append(
            {"path": request.url.path, "headers": dict(request.headers), "body": body}
        )
        if self.hang_submit:
            await asyncio.sleep(3600)
        if self.fail_submit > 0:
            self.fail_submit -= 1
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        if self.rate_limit_submit > 0 and len(self.tasks) >= self.rate_limit_after:
            self.rate_limit_submit -= 1
            return JSONResponse(
                {"detail": "You have exceeded the number of active tasks."},
                status_code=429,
                headers={"Retry-After": str(self.retry_after)},
            )
        if self.out_of_credits:
            return JSONResponse({"detail": "Insufficient credits"}, status_code=402)
        if self.moderate_submit:
            return JSONResponse({"detail": "Request Moderated: prompt flagged"}, status_code=400)
        if errors := validation_errors(request.path_params["model"], body):
            return JSONResponse({"detail": errors}, status_code=422)
        if not isinstance(body.get("prompt"), str):
            return JSONResponse(
                {"detail": [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]},
                status_code=422,
            )
        task = Task(str(uuid.uuid4()), request.path_params["model"], body)
        self.tasks[task.id] = task
        answer: dict[str, Any] = {"id": task.id}
        if not self.omit_polling_url:
            task.polling_url = self.polling_url_template.format(host=self.region_host, id=task.id)
            answer["polling_url"] = task.polling_url
        return JSONResponse(answer)

    async def _get_result(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"detail": "Not authenticated - Invalid Authentication"}, status_code=403)
        self.polls.append(request.url.hostname or "")
        self.poll_urls.append(str(request.url))
        if self.hang_poll:
            await asyncio.sleep(3600)
        if self.poll_errors > 0:
            self.poll_errors -= 1
            return Response("<html>502 Bad Gateway</html>", status_code=502, media_type="text/html")
        if self.malformed_polls > 0:
            self.malformed_polls -= 1
            return Response('{"id": "x", "status": "Pen', media_type="application/json")
        task_id = request.query_params.get("id", "")
        task = self.tasks.get(task_id)
        empty = {"id": task_id, "result": None, "progress": None, "details": None, "preview": None}
        elsewhere = task is not None and task.polling_url is not None
        if task is None or (elsewhere and _where(str(request.url)) != _where(str(task.polling_url))):
            return JSONResponse({"id": task_id, "status": "Task not found"})
        task.polls += 1
        if task.polls <= self.pending_polls:
            return JSONResponse({**empty, "status": "Pending"})
        if task.polls <= self.pending_polls + self.running_polls:
            progress = round(task.polls / (self.pending_polls + self.running_polls + 1), 2)
            return JSONResponse({**empty, "status": "Pending", "progress": progress})
        if self.outcome == "Ready":
            fmt = task.body.get("output_format", "jpeg")
            sample = self.files.publish(image_bytes("jpg" if fmt == "jpeg" else fmt), fmt)
            result = {"sample": sample, "prompt": task.body["prompt"], "seed": task.body.get("seed", 7),
                      "start_time": 1.0, "end_time": 4.5, "duration": 3.5}
            return JSONResponse({**empty, "status": "Ready", "result": result})
        if self.outcome in ("Request Moderated", "Content Moderated"):
            details = {"Moderation Reasons": ["Derivative Works"]}
            return JSONResponse({**empty, "status": self.outcome, "details": details})
        if self.outcome == "Error":
            return JSONResponse({**empty, "status": "Error", "details": {"error": "generation crashed"}})
        return JSONResponse({**empty, "status": self.outcome})
