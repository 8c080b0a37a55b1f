"""A fake self-hosted GPU box speaking both protocols the adapter knows.

OpenAI-compatible: ``POST /v1/images/generations`` (JSON) and ``/v1/images/edits``
(multipart), answering ``data[].b64_json`` or ``data[].url``, errors as
``{"error": {"message", "type", "code"}}``.

ComfyUI: ``POST /prompt`` validates the API-format graph the way ComfyUI does (known
node types, typed inputs, links to existing nodes, checkpoints it has) and answers
``{prompt_id, number, node_errors}`` or a 400 with ``error`` and ``node_errors``;
``GET /queue``, ``GET /history/{id}`` (``{}`` until the prompt ran), ``GET /view``,
``POST /upload/image``, ``POST /queue {"delete"}`` and ``POST /interrupt``. Prompts move
pending -> running -> done as the history is polled.

An optional Bearer key stands for the reverse proxy operators put in front (401).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, png_bytes
from tests.fakes.network import FakeNetwork
from tests.fakes.openai import parse_multipart

SAMPLERS = {"euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim"}
SCHEDULERS = {"normal", "karras", "exponential", "simple", "sgm_uniform"}
# class_type -> {input: expected python type(s)}; links (["id", slot]) are checked separately
NODES: dict[str, dict[str, Any]] = {
    "CheckpointLoaderSimple": {"ckpt_name": str},
    "EmptyLatentImage": {"width": int, "height": int, "batch_size": int},
    "CLIPTextEncode": {"text": str},
    "KSampler": {
        "seed": int,
        "steps": int,
        "cfg": (int, float),
        "sampler_name": str,
        "scheduler": str,
        "denoise": (int, float),
    },
    "VAEDecode": {},
    "VAEEncode": {},
    "LoadImage": {"image": str},
    "SaveImage": {"filename_prefix": str},
}


def error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class Prompt:
    id: str
    number: int
    graph: dict[str, Any]
    polls: int = 0
    state: str = "pending"  # running, done, deleted
    interrupted: bool = False
    history: dict[str, Any] | None = None


@dataclass
class FakeSelfHosted:
    host: str = "gpu.selfhosted.test"
    key: str | None = None
    checkpoints: tuple[str, ...] = ("sd_xl_base_1.0.safetensors", "juggernautXL_v9.safetensors")
    # The names its OpenAI-compatible endpoint serves (an unknown one is a 404 model_not_found,
    # as OpenAI-compatible servers answer); ComfyUI refuses an unknown checkpoint instead.
    served_models: tuple[str, ...] = ("sdxl",)

    # switches
    pending_polls: int = 0  # ComfyUI history polls while the prompt waits in the queue ...
    running_polls: int = 0  # ... and while it runs, then the outcome
    outcome: str = "success"  # or "error" (the GPU runs out of memory)
    fail_submit: int = 0  # 500 to this many submissions (either protocol)
    rate_limit_submit: int = 0  # 429 with Retry-After
    retry_after: int = 2
    hang_submit: bool = False
    hang_poll: bool = False
    malformed_submit: bool = False
    malformed_polls: int = 0
    moderate_submit: bool = False  # OpenAI protocol: a safety checker refuses the prompt
    answer_urls: bool = False  # OpenAI protocol: URLs instead of base64, whatever was asked
    url_ttl: float = 3600.0

    requests: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, Prompt] = field(default_factory=dict)
    outputs: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (subfolder, filename) -> PNG
    uploads: dict[str, bytes] = field(default_factory=dict)
    deletes: list[list[str]] = field(default_factory=list)
    interrupts: list[dict[str, Any]] = field(default_factory=list)
    history_polls: int = 0
    counter: int = 0

    def __post_init__(self) -> None:
        self.files = FileHost(f"https://{self.host}", ttl_seconds=self.url_ttl)
        self.app = Starlette(
            routes=[
                Route("/v1/images/generations", self._images, methods=["POST"]),
                Route("/v1/images/edits", self._images, methods=["POST"]),
                Route("/files/{name}", self.files.serve, methods=["GET"]),
                Route("/prompt", self._prompt, methods=["POST"]),
                Route("/queue", self._queue, methods=["GET", "POST"]),
                Route("/history/{prompt_id}", self._history, methods=["GET"]),
                Route("/interrupt", self._interrupt, methods=["POST"]),
                Route("/view", self._view, methods=["GET"]),
                Route("/upload/image", self._upload, methods=["POST"]),
            ]
        )

    def mount(self, network: FakeNetwork) -> None:
        network.add(self.host, self.app)

    # -- shared ---------------------------------------------------------------------

    def _refuse(self, request: Request) -> Response | None:
        if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
            return error(401, "Unauthorized", "invalid_api_key")
        return None

    async def _read(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        seen: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "headers": dict(request.headers),
            "json": None,
            "form": None,
            "files": [],
        }
        if content_type.startswith("multipart/form-data"):
            seen["form"], seen["files"] = parse_multipart(content_type, body)
        elif body:
            seen["json"] = await request.json()
        self.requests.append(seen)
        return seen

    async def _failure(self) -> Response | None:
        if self.hang_submit:
            await asyncio.sleep(3600)
        if self.fail_submit > 0:
            self.fail_submit -= 1
            return error(500, "Internal Server Error")
        if self.rate_limit_submit > 0:
            self.rate_limit_submit -= 1
            return error(
                429,
                "Too many requests",
                "rate_limit_exceeded",
                headers={"Retry-After": str(self.retry_after)},
            )
        if self.malformed_submit:
            return Response('{"prompt_id": "', media_type="application/json")
        return None

    # -- OpenAI-compatible ----------------------------------------------------------

    async def _images(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        seen = await self._read(request)
        params: dict[str, Any] = seen["json"] or dict(seen["form"] or {})
        if (failure := await self._failure()) is not None:
            return failure
        if "model" in params and params["model"] not in self.served_models:
            return error(404, f"The model `{params['model']}` does not exist.", "model_not_found")
        if self.moderate_submit:
            return error(400, "The prompt was flagged by the safety checker.", "content_policy_violation")
        try:
            width, height = (int(v) for v in str(params.get("size", "1024x1024")).split("x"))
        except ValueError:
            return error(400, f"Invalid size {params.get('size')!r}.", "invalid_size")
        n = int(params.get("n", 1))
        if not 1 <= n <= 8:
            return error(400, "n must be between 1 and 8.")
        if request.url.path.endswith("/edits") and not seen["files"]:
            return error(400, "Missing required parameter: 'image'.")
        data = []
        for i in range(n):
            png = png_bytes(width // 16, height // 16, (10 * i % 256, 80, 160))
            if self.answer_urls or params.get("response_format") == "url":
                self.files.ttl_seconds = self.url_ttl
                data.append({"url": self.files.publish(png, "png")})
            else:
                data.append({"b64_json": base64.b64encode(png).decode()})
        return JSONResponse({"created": int(time.time()), "data": data})

    # -- ComfyUI --------------------------------------------------------------------

    def validate(self, graph: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """(error, node_errors) the way ComfyUI's validate_prompt reports them."""
        if not isinstance(graph, dict) or not graph:
            return {
                "type": "invalid_prompt",
                "message": "Cannot execute because the prompt is empty.",
                "details": "",
                "extra_info": {},
            }, {}
        node_errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            kind = node.get("class_type") if isinstance(node, dict) else None
            if kind not in NODES:
                return {
                    "type": "invalid_prompt",
                    "message": f"Cannot execute because node {kind} does not exist.",
                    "details": f"Node ID '#{node_id}'",
                    "extra_info": {},
                }, {}
            problems = []
            for name, value in (node.get("inputs") or {}).items():
                if isinstance(value, list):
                    if len(value) != 2 or str(value[0]) not in graph:
                        problems.append(
                            ("required_input_missing", f"Required input is missing: {name}", name)
                        )
                    continue
                expected = NODES[kind].get(name)
                if expected is not None and (not isinstance(value, expected) or isinstance(value, bool)):
                    problems.append(
                        (
                            "invalid_input_type",
                            f"Failed to convert an input value to a {expected} value",
                            f"{name}, {value}",
                        )
                    )
                elif name == "ckpt_name" and value not in self.checkpoints:
                    problems.append(
                        (
                            "value_not_in_list",
                            "Value not in list",
                            f"ckpt_name: '{value}' not in {list(self.checkpoints)}",
                        )
                    )
                elif name == "image" and kind == "LoadImage" and value not in self.uploads:
                    problems.append(("custom_validation_failed", "Invalid image file", f"image - {value}"))
                elif name in ("sampler_name", "scheduler") and value not in (
                    SAMPLERS if name == "sampler_name" else SCHEDULERS
                ):
                    problems.append(("value_not_in_list", "Value not in list", f"{name}: '{value}'"))
            if problems:
                node_errors[node_id] = {
                    "errors": [
                        {"type": t, "message": m, "details": d, "extra_info": {}} for t, m, d in problems
                    ],
                    "dependent_outputs": [],
                    "class_type": kind,
                }
        if node_errors:
            return {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            }, node_errors
        if not any(n["class_type"] == "SaveImage" for n in graph.values()):
            return {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            }, {}
        return None, {}

    async def _prompt(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        seen = await self._read(request)
        if (failure := await self._failure()) is not None:
            return failure
        body = seen["json"] or {}
        if "prompt" not in body:
            return JSONResponse({"error": "no prompt", "node_errors": []}, status_code=400)
        problem, node_errors = self.validate(body["prompt"])
        if problem is not None:
            return JSONResponse({"error": problem, "node_errors": node_errors}, status_code=400)
        self.counter += 1
        prompt = Prompt(str(uuid.uuid4()), self.counter, body["prompt"])
        prompt.state = "pending" if self.pending_polls else "running"
        self.prompts[prompt.id] = prompt
        return JSONResponse({"prompt_id": prompt.id, "number": prompt.number, "node_errors": {}})

    async def _queue(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        if request.method == "POST":
            body = await request.json()
            to_delete = [str(i) for i in body.get("delete") or []]
            self.deletes.append(to_delete)
            for prompt_id in to_delete:
                prompt = self.prompts.get(prompt_id)
                if prompt is not None and prompt.state == "pending":
                    prompt.state = "deleted"
            return Response(status_code=200)

        def item(p: Prompt) -> list[Any]:
            return [p.number, p.id, p.graph, {"client_id": "x"}, ["9"]]

        return JSONResponse(
            {
                "queue_running": [item(p) for p in self.prompts.values() if p.state == "running"],
                "queue_pending": [item(p) for p in self.prompts.values() if p.state == "pending"],
            }
        )

    async def _interrupt(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        body = await request.json() if await request.body() else {}
        self.interrupts.append(body)
        for prompt in self.prompts.values():
            if prompt.state == "running" and body.get("prompt_id") in (None, prompt.id):
                prompt.interrupted = True
        return Response(status_code=200)

    async def _history(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        self.history_polls += 1
        if self.hang_poll:
            await asyncio.sleep(3600)
        if self.malformed_polls > 0:
            self.malformed_polls -= 1
            return Response("<html>502 Bad Gateway", media_type="text/html")
        prompt = self.prompts.get(request.path_params["prompt_id"])
        if prompt is None or prompt.state == "deleted":
            return JSONResponse({})
        self._advance(prompt)
        return JSONResponse({prompt.id: prompt.history} if prompt.history is not None else {})

    def _advance(self, prompt: Prompt) -> None:
        if prompt.state == "done":
            return
        prompt.polls += 1
        if prompt.interrupted:
            self._finish(
                prompt,
                "error",
                {},
                [
                    (
                        "execution_interrupted",
                        {
                            "prompt_id": prompt.id,
                            "node_id": "3",
                            "node_type": "KSampler",
                            "executed": ["4", "5", "6", "7"],
                            "timestamp": 1_700_000_001_000,
                        },
                    )
                ],
            )
            return
        if prompt.polls <= self.pending_polls:
            return
        prompt.state = "running"
        if prompt.polls <= self.pending_polls + self.running_polls:
            return
        if self.outcome == "error":
            self._finish(
                prompt,
                "error",
                {},
                [
                    (
                        "execution_error",
                        {
                            "prompt_id": prompt.id,
                            "node_id": "3",
                            "node_type": "KSampler",
                            "executed": ["4"],
                            "exception_message": "Allocation on device would exceed allowed memory.",
                            "exception_type": "torch.OutOfMemoryError",
                            "traceback": ["..."],
                            "timestamp": 1_700_000_004_000,
                        },
                    )
                ],
            )
            return
        outputs: dict[str, Any] = {}
        latent = next(
            (n["inputs"] for n in prompt.graph.values() if n["class_type"] == "EmptyLatentImage"),
            {"width": 512, "height": 512, "batch_size": 1},
        )
        for node_id, node in prompt.graph.items():
            if node["class_type"] != "SaveImage":
                continue
            subfolder, _, base = str(node["inputs"]["filename_prefix"]).rpartition("/")
            images = []
            for i in range(latent["batch_size"]):
                name = f"{base}_{self.counter:05}_{i}_.png"
                self.outputs[(subfolder, name)] = png_bytes(latent["width"] // 16, latent["height"] // 16)
                images.append({"filename": name, "subfolder": subfolder, "type": "output"})
            outputs[node_id] = {"images": images}
        outputs["preview"] = {
            "images": [{"filename": "ComfyUI_temp_0001.png", "subfolder": "", "type": "temp"}]
        }
        self._finish(
            prompt,
            "success",
            outputs,
            [("execution_success", {"prompt_id": prompt.id, "timestamp": 1_700_000_004_500})],
        )

    @staticmethod
    def _finish(prompt: Prompt, status: str, outputs: dict[str, Any], events: list[tuple[str, Any]]) -> None:
        prompt.state = "done"
        messages = [
            ["execution_start", {"prompt_id": prompt.id, "timestamp": 1_700_000_000_000}],
            ["execution_cached", {"nodes": [], "prompt_id": prompt.id, "timestamp": 1_700_000_000_001}],
            *[[e, d] for e, d in events],
        ]
        prompt.history = {
            "prompt": [prompt.number, prompt.id, prompt.graph, {}, list(outputs)],
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {},
        }

    async def _view(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        query = request.query_params
        self.requests.append({"method": "GET", "path": "/view", "query": dict(query)})
        data = self.outputs.get((query.get("subfolder", ""), query.get("filename", "")))
        if data is None or query.get("type") != "output":
            return Response(status_code=404)
        return Response(data, media_type="image/png")

    async def _upload(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        seen = await self._read(request)
        [image] = [f for f in seen["files"] if f["name"] == "image"]
        self.uploads[image["filename"]] = image["data"]
        return JSONResponse(
            {"name": image["filename"], "subfolder": "", "type": seen["form"].get("type", "input")}
        )
