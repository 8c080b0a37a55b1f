"""A fake Gemini API: Imagen ``:predict``, Gemini ``:generateContent`` and Veo ``:predictLongRunning``.

Same wire format as the real service: the key in ``x-goog-api-key`` (a missing key is a
403 ``PERMISSION_DENIED``, a wrong one a 400 ``INVALID_ARGUMENT`` with ``ErrorInfo``
``API_KEY_INVALID``), errors as ``{"error": {"code", "message", "status", "details"}}``,
429 ``RESOURCE_EXHAUSTED`` carrying a ``RetryInfo.retryDelay``, Veo operations polled at
``GET /v1beta/{name}`` until ``done`` and videos behind the key at
``/v1beta/files/{id}:download?alt=media`` (optionally redirecting to an expiring storage
URL). There is no cancel for operations in the real API, so there is none here either.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.fakes.media import FileHost, image_bytes, mp4_bytes
from tests.fakes.network import FakeNetwork

IMAGEN_RATIOS = {"1:1", "3:4", "4:3", "9:16", "16:9"}
GEMINI_RATIOS = {"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}
GENERATION_CONFIG_FIELDS = {
    "responseModalities",
    "imageConfig",
    "seed",
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "responseMimeType",
    "thinkingConfig",
    "mediaResolution",
}
STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


#: The Gemini API model ids the fake serves (https://ai.google.dev/gemini-api/docs/models, read
#: 2026-12-02). Imagen 4 was shut down on 2026-08-17, veo-3.0-* on 2026-06-30 and
#: gemini-2.5-flash-image on 2026-10-02 (https://ai.google.dev/gemini-api/docs/changelog and
#: /deprecations): those are in ARCHIVED_MODELS, for tests of the adapter's protocol paths.
#: Any other id is a 404 NOT_FOUND "models/<id> is not found for API version v1beta".
SERVED_MODELS = frozenset({
    "gemini-3.1-flash-image", "gemini-3-pro-image",
    "veo-3.1-generate-preview", "veo-3.1-fast-generate-preview",
})
ARCHIVED_MODELS = frozenset({
    "imagen-4.0-generate-001", "imagen-4.0-ultra-generate-001", "imagen-4.0-fast-generate-001",
    "gemini-2.5-flash-image", "veo-3.0-generate-001", "veo-3.0-fast-generate-001",
    "gemini-3-pro-image-preview", "gemini-3.1-flash-image-preview",
})

@functools.cache
def video_bytes() -> bytes:
    return mp4_bytes(1)


def error(code: int, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    status = STATUS.get(code, "UNKNOWN")
    body: dict[str, Any] = {"error": {"code": code, "message": message, "status": status}}
    if details:
        body["error"]["details"] = details
    return JSONResponse(body, status_code=code)


@dataclass
class Operation:
    name: str
    model: str
    samples: int
    polls: int = 0
    done: bool = False
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeGoogle:
    host: str = "generativelanguage.googleapis.test"
    served_models: frozenset[str] = SERVED_MODELS  # ids the provider serves
    storage_host: str = "storage.googleusercontent.test"
    key: str = "AIza-test-key"

    # switches
    pending_polls: int = 0  # Veo polls answered without done ...
    running_polls: int = 0  # ... then with progress metadata, then the outcome
    video_outcome: str = "done"  # or "filtered" (RAI), "failed", "cancelled", "policy_error"
    fail_submit: int = 0  # 500 INTERNAL to this many generation calls
    rate_limit_submit: int = 0  # 429 RESOURCE_EXHAUSTED with a RetryInfo detail
    retry_delay: str = "7s"
    billing_required: bool = False  # 400: the model needs a paid account
    moderate_prompt: bool = False  # Imagen: no predictions; Gemini: promptFeedback.blockReason
    moderate_image: bool = False  # Imagen: raiFilteredReason; Gemini: finishReason IMAGE_SAFETY
    text_only: bool = False  # Gemini answers with words and no picture
    hang_submit: bool = False
    hang_poll: bool = False
    malformed_submit: bool = False
    malformed_polls: int = 0
    download_redirect: bool = False  # the file download redirects to an expiring storage URL
    download_ttl: float = 3600.0
    download_errors: int = 0  # 503 to this many video downloads

    requests: list[dict[str, Any]] = field(default_factory=list)
    operations: dict[str, Operation] = field(default_factory=dict)
    polls: int = 0
    downloads: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = FileHost(f"https://{self.storage_host}", ttl_seconds=self.download_ttl)
        self.app = Starlette(
            routes=[
                Route("/v1beta/models/{call}", self._call, methods=["POST"]),
                Route("/v1beta/models/{model}/operations/{op}", self._operation, methods=["GET"]),
                Route("/v1beta/files/{name}", self._file, methods=["GET"]),
            ]
        )
        self.storage = Starlette(routes=[Route("/files/{name}", self.files.serve, methods=["GET"])])

    def mount(self, network: FakeNetwork) -> None:
        network.add(self.host, self.app)
        network.add(self.storage_host, self.storage)

    # -- shared ---------------------------------------------------------------------

    def _refuse(self, request: Request) -> Response | None:
        given = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not given:
            return error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if given != self.key:
            return error(
                400,
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        return None

    async def _failure(self) -> Response | None:
        if self.hang_submit:
            await asyncio.sleep(3600)
        if self.fail_submit > 0:
            self.fail_submit -= 1
            return error(
                500,
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            )
        if self.rate_limit_submit > 0:
            self.rate_limit_submit -= 1
            quota = "You exceeded your current quota, please check your plan and billing details."
            return error(
                429,
                quota,
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/generate_requests",
                                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                            }
                        ],
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": self.retry_delay},
                ],
            )
        if self.billing_required:
            return error(400, "Imagen API is only accessible to billed users at this time.")
        if self.malformed_submit:
            return Response('{"predictions": [', media_type="application/json")
        return None

    # -- generation calls -----------------------------------------------------------

    async def _call(self, request: Request) -> Response:
        model, _, method = request.path_params["call"].rpartition(":")
        if (refused := self._refuse(request)) is not None:
            return refused
        body = await request.json()
        self.requests.append(
            {
                "path": request.url.path,
                "model": model,
                "method": method,
                "headers": dict(request.headers),
                "json": body,
            }
        )
        if (failure := await self._failure()) is not None:
            return failure
        if model not in self.served_models:
            return error(
                404, f"models/{model} is not found for API version v1beta, or is not supported for {method}."
            )
        if method == "predict" and model.startswith("imagen-"):
            return self._imagen(body)
        if method == "generateContent" and model.startswith("gemini-"):
            return self._gemini(model, body)
        if method == "predictLongRunning" and model.startswith("veo-"):
            return self._veo(model, body)
        return error(
            404, f"models/{model} is not found for API version v1beta, or is not supported for {method}."
        )

    def _imagen(self, body: dict[str, Any]) -> Response:
        instances, parameters = body.get("instances") or [], body.get("parameters") or {}
        if len(instances) != 1 or not instances[0].get("prompt"):
            return error(400, "Invalid instances: exactly one instance with a prompt is required.")
        count = int(parameters.get("sampleCount", 4))
        if not 1 <= count <= 4:
            return error(400, f"sampleCount must be between 1 and 4, got {count}.")
        if parameters.get("aspectRatio", "1:1") not in IMAGEN_RATIOS:
            return error(400, f"Unsupported aspect ratio {parameters.get('aspectRatio')}.")
        if parameters.get("sampleImageSize", "1K") not in ("1K", "2K"):
            return error(400, "sampleImageSize must be 1K or 2K.")
        if self.moderate_prompt:
            return JSONResponse({})  # every image filtered and no reason asked for: an empty answer
        mime = (parameters.get("outputOptions") or {}).get("mimeType", "image/png")
        fmt = {"image/png": "png", "image/jpeg": "jpg"}.get(mime)
        if fmt is None:
            return error(400, f"Unsupported output mime type {mime}.")
        predictions: list[dict[str, Any]] = []
        for _ in range(count):
            if self.moderate_image:
                if parameters.get("includeRaiReason"):
                    reason = (
                        "Unable to show generated images. All images were filtered out because they "
                        "violated Vertex AI's usage guidelines."
                    )
                    predictions.append({"raiFilteredReason": reason})
                continue
            data = base64.b64encode(image_bytes(fmt)).decode()
            predictions.append({"bytesBase64Encoded": data, "mimeType": mime})
        return JSONResponse({"predictions": predictions} if predictions else {})

    def _gemini(self, model: str, body: dict[str, Any]) -> Response:
        config = body.get("generationConfig") or {}
        unknown = sorted(set(config) - GENERATION_CONFIG_FIELDS)
        if unknown:
            return error(
                400,
                f'Invalid JSON payload received. Unknown name "{unknown[0]}" at '
                "'generation_config': Cannot find field.",
            )
        ratio = (config.get("imageConfig") or {}).get("aspectRatio", "1:1")
        if ratio not in GEMINI_RATIOS:
            return error(400, f"Unsupported aspect ratio: {ratio}.")
        contents = body.get("contents") or []
        if not contents or not contents[0].get("parts"):
            return error(400, "* GenerateContentRequest.contents: contents is not specified")
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302}
        if self.moderate_prompt:
            return JSONResponse(
                {
                    "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                    "usageMetadata": usage,
                    "modelVersion": model,
                }
            )
        if self.moderate_image:
            candidate: dict[str, Any] = {"content": {"role": "model"}, "finishReason": "IMAGE_SAFETY"}
        elif self.text_only:
            words = [{"text": "I can't draw that, but here is a poem."}]
            candidate = {"content": {"role": "model", "parts": words}, "finishReason": "STOP"}
        else:
            picture = base64.b64encode(image_bytes("png")).decode()
            draft = base64.b64encode(image_bytes("jpg")).decode()
            candidate = {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Thinking about composition.", "thought": True},
                        {"inlineData": {"mimeType": "image/jpeg", "data": draft}, "thought": True},
                        {"text": "Here is the image you asked for."},
                        {"inlineData": {"mimeType": "image/png", "data": picture}},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        return JSONResponse(
            {
                "candidates": [candidate],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": uuid.uuid4().hex[:20],
            }
        )

    def _veo(self, model: str, body: dict[str, Any]) -> Response:
        instances, parameters = body.get("instances") or [], body.get("parameters") or {}
        if len(instances) != 1 or not instances[0].get("prompt"):
            return error(400, "Invalid instances: exactly one instance with a prompt is required.")
        for key in ("image", "lastFrame"):
            image = instances[0].get(key)
            if image is not None and not (image.get("bytesBase64Encoded") and image.get("mimeType")):
                return error(400, f"{key} needs bytesBase64Encoded and mimeType.")
        if parameters.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
            return error(400, "Aspect ratio must be 16:9 or 9:16.")
        if int(parameters.get("durationSeconds", 8)) not in (4, 5, 6, 8):
            return error(400, "The duration is out of the supported range.")
        if parameters.get("resolution", "720p") not in ("720p", "1080p", "4k"):
            return error(400, "Unsupported resolution.")
        name = f"models/{model}/operations/{uuid.uuid4().hex[:12]}"
        self.operations[name] = Operation(name, model, int(parameters.get("sampleCount", 1)))
        return JSONResponse({"name": name})

    # -- operations and files -------------------------------------------------------

    async def _operation(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        self.polls += 1
        if self.hang_poll:
            await asyncio.sleep(3600)
        if self.malformed_polls > 0:
            self.malformed_polls -= 1
            return Response('{"name": "models/', media_type="application/json")
        name = f"models/{request.path_params['model']}/operations/{request.path_params['op']}"
        operation = self.operations.get(name)
        if operation is None:
            return error(404, f"Operation {name} not found.")
        self._advance(operation)
        if not operation.done:
            body: dict[str, Any] = {"name": name}
            if operation.polls > self.pending_polls:
                body["metadata"] = {
                    "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                    "PredictLongRunningMetadata"
                }
            return JSONResponse(body)
        return JSONResponse({"name": name, "done": True, **operation.result})

    def _advance(self, operation: Operation) -> None:
        if operation.done:
            return
        operation.polls += 1
        if operation.polls <= self.pending_polls + self.running_polls:
            return
        operation.done = True
        kind = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
        if self.video_outcome == "done":
            samples = [
                {
                    "video": {
                        "uri": f"https://{self.host}/v1beta/files/{uuid.uuid4().hex[:12]}:download?alt=media"
                    }
                }
                for _ in range(operation.samples)
            ]
            answer = {"generatedSamples": samples}
            operation.result = {"response": {"@type": kind, "generateVideoResponse": answer}}
        elif self.video_outcome == "filtered":
            reasons = [
                "Your current safety settings for person generation prevented this video from being "
                "generated. Try rephrasing the prompt."
            ]
            operation.result = {
                "response": {
                    "@type": kind,
                    "generateVideoResponse": {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": reasons},
                }
            }
        elif self.video_outcome == "cancelled":
            operation.result = {"error": {"code": 1, "message": "The operation was cancelled."}}
        elif self.video_outcome == "policy_error":
            message = (
                "The prompt could not be submitted. This prompt contains words that violate "
                "Gemini API's usage guidelines."
            )
            operation.result = {"error": {"code": 3, "message": message}}
        else:
            operation.result = {
                "error": {"code": 13, "message": "Video generation failed due to an internal error."}
            }

    async def _file(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        name = request.path_params["name"]
        self.downloads.append(
            {"path": request.url.path, "query": dict(request.query_params), "headers": dict(request.headers)}
        )
        if not name.endswith(":download") or request.query_params.get("alt") != "media":
            return error(400, "Only media downloads are served here.")
        if self.download_errors > 0:
            self.download_errors -= 1
            return error(503, "The service is currently unavailable.")
        if self.download_redirect:
            self.files.ttl_seconds = self.download_ttl
            return RedirectResponse(self.files.publish(video_bytes(), "mp4"), status_code=302)
        return Response(video_bytes(), media_type="video/mp4")
