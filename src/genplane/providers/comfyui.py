"""ComfyUI's own HTTP API, as the self-hosted adapter's second protocol.

Protocol facts this relies on:

- ``POST /prompt`` takes ``{"prompt": <API-format graph>, "client_id"}`` and answers
  ``{"prompt_id", "number", "node_errors"}``; a graph that fails validation (an unknown
  checkpoint, a value of the wrong type) is a 400 with ``error`` and ``node_errors``.
- ``GET /history/{prompt_id}`` is ``{}`` until the prompt has run, then
  ``{prompt_id: {"outputs": {node: {"images": [{filename, subfolder, type}]}},
  "status": {"status_str": "success"|"error", "completed", "messages"}}}``; the messages
  are ``[event, data]`` pairs (``execution_error`` with the exception,
  ``execution_interrupted`` after an interrupt). Files come from ``GET /view``.
- A prompt deleted from the queue, or lost when the server restarted, never reaches the
  history: a prompt that is neither in ``GET /queue`` nor in the history is gone.
- Cancel is two calls: ``POST /queue {"delete": [id]}`` for a waiting prompt and
  ``POST /interrupt`` for the running one (with ``prompt_id``, which recent versions use
  to interrupt only that prompt), so the queue is read first to pick one.
- ComfyUI reuses cached results for an identical graph, and a graph with a fixed seed
  makes the same picture every time, so a random seed is drawn when none is given.

Workflows (``params.workflow``, an API-format graph; a minimal SDXL text-to-image graph
when absent) carry placeholders. A string value that is exactly ``"{{name}}"`` becomes the
value itself, with its JSON type (``"{{seed}}"`` -> ``12345``); inside a longer string it
is interpolated as text. Names: ``prompt``, ``negative_prompt``, ``seed``, ``width``,
``height``, ``batch_size`` (the output number), ``filename_prefix``, ``checkpoint``,
``steps``, ``cfg``, ``sampler_name``, ``scheduler``, ``denoise``, ``input_image`` /
``input_image_1``.. (input images, uploaded through ``POST /upload/image``), and any other
scalar in ``params``. ``params`` override the defaults; the client's prompt, seed,
negative prompt, output number and inputs override ``params``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote

import structlog

from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.http import ProviderHttp, dig
from genplane.providers.outputs import CONTENT_TYPES, canceled_upstream, image_output

PROVIDER = "selfhosted"
log = structlog.get_logger("genplane.providers.comfyui")

DEFAULT_WORKFLOW: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{checkpoint}}"}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": "{{batch_size}}"},
    },
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative_prompt}}", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": "{{seed}}",
            "steps": "{{steps}}",
            "cfg": "{{cfg}}",
            "sampler_name": "{{sampler_name}}",
            "scheduler": "{{scheduler}}",
            "denoise": "{{denoise}}",
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": "{{filename_prefix}}", "images": ["8", 0]},
    },
}
DEFAULT_VALUES: dict[str, Any] = {
    "checkpoint": "sd_xl_base_1.0.safetensors",
    "steps": 25,
    "cfg": 7.0,
    "sampler_name": "dpmpp_2m",
    "scheduler": "karras",
    "denoise": 1.0,
    "negative_prompt": "",
}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_PROMPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_FILE_KEYS = ("images", "gifs", "videos")


def placeholders(node: Any) -> set[str]:
    """Every placeholder name used anywhere in a graph."""
    if isinstance(node, str):
        return set(_PLACEHOLDER.findall(node))
    if isinstance(node, dict):
        return {name for value in node.values() for name in placeholders(value)}
    if isinstance(node, list):
        return {name for value in node for name in placeholders(value)}
    return set()


def fill(node: Any, values: dict[str, Any]) -> Any:
    """A copy of ``node`` with its placeholders replaced (whole-string ones keep their type)."""
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node.strip())
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), node)
    if isinstance(node, dict):
        return {key: fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [fill(value, values) for value in node]
    return node


class ComfyUI:
    def __init__(self, http: ProviderHttp, max_output_bytes: int) -> None:
        self.http = http
        self.max_output_bytes = max_output_bytes

    # -- submit -----------------------------------------------------------------------

    def workflow(self, job: ProviderJob) -> dict[str, Any]:
        graph = job.params.get("workflow", DEFAULT_WORKFLOW)
        if not isinstance(graph, dict) or not graph:
            raise ProviderError(
                "bse_model_not_configured", "params.workflow must be an API-format ComfyUI graph.", False
            )
        return graph

    def values(self, job: ProviderJob, width: int, height: int, uploads: list[str]) -> dict[str, Any]:
        values: dict[str, Any] = {
            **DEFAULT_VALUES,
            "width": width,
            "height": height,
            "seed": secrets.randbelow(2**32),
            "filename_prefix": f"genplane/{job.generation_id}",
        }
        values.update(
            {
                k: v
                for k, v in job.params.items()
                if k != "workflow" and isinstance(v, str | int | float | bool)
            }
        )
        values.update(prompt=job.prompt, batch_size=max(1, job.output_number))
        negative = job.specific.get("generation_negative_prompt")
        if negative is not None:
            values["negative_prompt"] = negative
        if job.seed is not None:
            values["seed"] = job.seed
        if uploads:
            values["input_image"] = uploads[0]
            values.update({f"input_image_{i}": name for i, name in enumerate(uploads, 1)})
        return values

    async def graph(self, job: ProviderJob, width: int, height: int) -> dict[str, Any]:
        """The workflow with its placeholders filled (uploading input images it refers to)."""
        workflow = self.workflow(job)
        used = placeholders(workflow)
        wants_inputs = any(name.startswith("input_image") for name in used)
        if job.inputs and not wants_inputs:
            message = "This model's ComfyUI workflow takes no input images."
            raise ProviderError("bse_unsupported_parameter", message, False)
        uploads = [await self._upload(job, i) for i in range(len(job.inputs))] if wants_inputs else []
        values = self.values(job, width, height, uploads)
        missing = sorted(used - set(values))
        if missing:
            message = f"The ComfyUI workflow uses {{{{{missing[0]}}}}}, which has no value."
            raise ProviderError("bse_model_not_configured", message, False)
        filled: dict[str, Any] = fill(workflow, values)
        return filled

    async def _upload(self, job: ProviderJob, index: int) -> str:
        image = job.inputs[index]
        ext = next((e for e, t in CONTENT_TYPES.items() if t == image.content_type), "png")
        part = (f"genplane-{job.generation_id}-{index}.{ext}", image.data, image.content_type)
        answer = await self.http.json(
            "POST",
            "/upload/image",
            files={"image": part},
            data={"type": "input", "overwrite": "true"},
        )
        name, subfolder = dig(answer, "name"), dig(answer, "subfolder")
        if not isinstance(name, str) or not name:
            raise ProviderError("bse_provider_error", "ComfyUI did not name the uploaded image.", True)
        return f"{subfolder}/{name}" if isinstance(subfolder, str) and subfolder else name

    async def submit(self, job: ProviderJob, width: int, height: int) -> str:
        body = {"prompt": await self.graph(job, width, height), "client_id": f"genplane-{job.generation_id}"}
        answer = await self.http.json("POST", "/prompt", json=body)
        prompt_id = dig(answer, "prompt_id")
        if not isinstance(prompt_id, str) or not _PROMPT_ID.match(prompt_id):
            raise ProviderError("bse_provider_error", "ComfyUI answered without a prompt id.", True)
        return prompt_id

    # -- wait -------------------------------------------------------------------------

    async def wait(self, job: ProviderJob, prompt_id: str) -> ProviderResult:
        if not _PROMPT_ID.match(prompt_id):
            raise ProviderError("bse_provider_error", "Malformed ComfyUI prompt id.", False)
        gone = False
        while True:
            history = await self.http.poll_json(
                "GET", f"/history/{quote(prompt_id, safe='')}"
            )
            entry = dig(history, prompt_id)
            if isinstance(entry, dict) and _finished(entry):
                return await self._result(job, prompt_id, entry)
            if entry is None:
                if gone:  # neither queued nor in the history, twice: deleted or lost in a restart
                    raise canceled_upstream("ComfyUI", prompt_id)
                queue = await self.http.poll_json("GET", "/queue")
                gone = prompt_id not in _queued(queue, "queue_running") | _queued(queue, "queue_pending")
                if gone:
                    continue  # it may have finished between the two reads: look once more
            gone = False
            await self.http.pause()

    async def _result(self, job: ProviderJob, prompt_id: str, entry: dict[str, Any]) -> ProviderResult:
        messages = dig(entry, "status", "messages")
        events = (
            {str(m[0]): m[1] for m in messages if isinstance(m, list) and len(m) == 2} if messages else {}
        )
        if "execution_interrupted" in events:
            raise canceled_upstream("ComfyUI", prompt_id)
        if dig(entry, "status", "status_str") == "error" or "execution_error" in events:
            failure = events.get("execution_error") or {}
            where = dig(failure, "node_type") or "a node"
            kind = dig(failure, "exception_type") or "error"
            # The exception's text is the server's Python error (file paths on that machine
            # included): the operator's log gets it, the tenant the node and the error type.
            log.warning(
                "comfyui_execution_error",
                prompt_id=prompt_id,
                node=str(where)[:100],
                exception_type=str(kind)[:100],
                exception_message=str(dig(failure, "exception_message") or "")[:2000],
            )
            message = f"ComfyUI failed in {where} ({kind}).".replace("\n", " ").strip()[:300]
            raise ProviderError("bse_provider_error", message, True)
        files = [
            f
            for node in (entry.get("outputs") or {}).values()
            if isinstance(node, dict)
            for key in _FILE_KEYS
            for f in node.get(key) or []
            if isinstance(f, dict) and isinstance(f.get("filename"), str)
        ]
        saved = [f for f in files if f.get("type") == "output"] or files
        if not saved:
            raise ProviderError("bse_provider_error", f"ComfyUI prompt {prompt_id} saved no file.", True)
        outputs = [await self._fetch(job, f) for f in saved[: max(1, job.output_number)]]
        return ProviderResult(outputs=outputs, predict_time=_took(events))

    async def _fetch(self, job: ProviderJob, file: dict[str, Any]) -> ProviderOutput:
        params = {
            "filename": file["filename"],
            "subfolder": file.get("subfolder") or "",
            "type": file.get("type") or "output",
        }
        response = await self.http.send("GET", "/view", params=params)
        data = response.content
        if not data or len(data) > self.max_output_bytes:
            raise ProviderError("bse_provider_error", "ComfyUI sent an empty or oversized file.", True)
        ext = str(file["filename"]).rpartition(".")[2].lower()
        ext = {"jpeg": "jpg"}.get(ext, ext)
        if job.model_type == "image":
            return image_output(PROVIDER, data)
        return ProviderOutput(
            ext=ext, content_type=CONTENT_TYPES.get(ext, "application/octet-stream"), data=data
        )

    # -- cancel -----------------------------------------------------------------------

    async def cancel(self, prompt_id: str) -> bool:
        try:
            queue = await self.http.json("GET", "/queue")
            if prompt_id in _queued(queue, "queue_pending"):
                await self.http.send(
                    "POST", "/queue", json={"delete": [prompt_id]}
                )
                return True
            if prompt_id in _queued(queue, "queue_running"):
                await self.http.send(
                    "POST", "/interrupt", json={"prompt_id": prompt_id}
                )
                return True
        except ProviderError:
            return False
        return False  # already finished (or unknown): nothing left to stop


def _finished(entry: dict[str, Any]) -> bool:
    status = entry.get("status")
    if not isinstance(status, dict):  # versions without a status: done once outputs are recorded
        return bool(entry.get("outputs"))
    return bool(status.get("completed")) or status.get("status_str") in ("success", "error")


def _queued(queue: Any, which: str) -> set[str]:
    items = dig(queue, which)
    return {str(item[1]) for item in items or [] if isinstance(item, list) and len(item) > 1}


def _took(events: dict[str, Any]) -> float | None:
    start, end = dig(events, "execution_start", "timestamp"), dig(events, "execution_success", "timestamp")
    if isinstance(start, int | float) and isinstance(end, int | float) and end >= start:
        return round((end - start) / 1000, 3)
    return None


def comfy_error(body: dict[str, Any]) -> str:
    """A 400 from ``POST /prompt`` in one line: the error and the first node's complaint."""
    error = body.get("error")
    text = str(dig(error, "message") or error or "invalid prompt")
    details = dig(error, "details")
    if details:
        text += f" ({details})"
    nodes = body.get("node_errors")
    if isinstance(nodes, dict) and nodes:
        node_id, node = next(iter(nodes.items()))
        first = dig(node, "errors", 0)
        text += (
            f"; node {node_id} ({dig(node, 'class_type')}): {dig(first, 'message')} {dig(first, 'details')}"
        )
    return text.replace("\n", " ")[:300]
