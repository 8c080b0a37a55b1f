"""A small Cloudflare Workers AI REST API: ``POST /client/v4/accounts/{id}/ai/run/{model}``.

Same wire format as the real service: a bearer API token (401 with the v4 envelope and
code 10000 without it), synchronous answers whose shape depends on the model (raw
``image/png`` / ``image/jpeg`` bytes for the SDXL family and Phoenix, the JSON envelope
with a base64 ``result.image`` for FLUX and Lucid Origin), FLUX.2 accepting multipart
form data only, FLUX.1 schnell refusing properties it does not know, and the error
codes of the real API. There is nothing to poll or cancel, and no output URLs: the
image is in the answer.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.media import image_bytes
from tests.fakes.network import FakeNetwork

HOST = "api.cloudflare.test"
BASE_URL = f"https://{HOST}/client/v4"

BINARY_MODELS = {  # model -> the image format it answers as raw bytes
    "@cf/bytedance/stable-diffusion-xl-lightning": "png",
    "@cf/stabilityai/stable-diffusion-xl-base-1.0": "png",
    "@cf/leonardo/phoenix-1.0": "jpg",
}
JSON_MODELS = {
    "@cf/black-forest-labs/flux-1-schnell": {"prompt", "steps"},  # additionalProperties: false
    "@cf/leonardo/lucid-origin": None,
    "@cf/black-forest-labs/flux-2-dev": None,
    "@cf/black-forest-labs/flux-2-klein-9b": None,
}
MULTIPART_MODELS = {"@cf/black-forest-labs/flux-2-dev", "@cf/black-forest-labs/flux-2-klein-9b"}


#: Every model the fake serves (https://developers.cloudflare.com/workers-ai/models/, read
#: 2026-12-02); any other id answers 400 with error 5007 "No such model", as the real API does.
SERVED_MODELS = frozenset(BINARY_MODELS) | frozenset(JSON_MODELS)

def envelope_error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class SeenCall:
    path: str
    model: str
    headers: dict[str, str]
    fields: dict[str, Any]  # JSON body, or the form's text fields
    files: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)  # name -> (filename, type, data)


Files = dict[str, tuple[str, str, bytes]]  # name -> (filename, content type, data)


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], Files]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    files: Files = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        decoded = part.get_payload(decode=True)
        payload = decoded if isinstance(decoded, bytes) else b""
        filename = part.get_filename()
        if filename:
            files[str(name)] = (filename, part.get_content_type(), payload)
        else:
            fields[str(name)] = payload.decode()
    return fields, files


@dataclass
class FakeCloudflare:
    token: str = "cf-test-token"
    served_models: frozenset[str] = SERVED_MODELS  # ids the provider serves
    account_id: str = "acc0123456789"

    # switches
    fail: int = 0  # answer 500 to this many calls first
    rate_limit: int = 0  # answer 429 (3040, out of capacity) with Retry-After to this many calls
    retry_after: int = 2
    out_of_neurons: bool = False  # 429 (3036): the daily free allocation is used up
    nsfw: bool = False  # 400 (3030): the prompt is refused
    hang: bool = False  # never answer
    malformed: bool = False  # a JSON model answers garbled JSON
    failed_envelope: bool = False  # HTTP 200 with success: false
    delay: float = 0.0  # seconds each call takes

    calls: list[SeenCall] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0  # the most calls being answered at one moment

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[Route("/client/v4/accounts/{account}/ai/run/{model:path}", self._run, methods=["POST"])]
        )

    def mount(self, network: FakeNetwork) -> None:
        network.add(HOST, self.app)

    async def _run(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return envelope_error(401, 10000, "Authentication error")
        if request.path_params["account"] != self.account_id:
            return envelope_error(403, 10000, "Authentication error")
        model = request.path_params["model"]
        raw = await request.body()
        content_type = request.headers.get("content-type", "")
        call = SeenCall(request.url.path, model, dict(request.headers), {})
        if content_type.startswith("multipart/form-data"):
            call.fields, call.files = parse_multipart(content_type, raw)
        else:
            try:
                call.fields = (await request.json()) if raw else {}
            except ValueError:
                return envelope_error(400, 3003, "Request is missing headers or body: invalid JSON")
        self.calls.append(call)
        if self.delay:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail > 0:
            self.fail -= 1
            return envelope_error(500, 3043, "Internal server error")
        if self.rate_limit > 0:
            self.rate_limit -= 1
            return envelope_error(429, 3040, "Capacity temporarily exceeded, please try again.",
                                  headers={"Retry-After": str(self.retry_after)})
        if self.out_of_neurons:
            return envelope_error(
                429, 3036,
                "Account limited: you have used up your daily free allocation of 10,000 neurons.",
            )
        if model not in self.served_models:
            return envelope_error(400, 5007, f"No such model {model} or task")
        if model in MULTIPART_MODELS and not content_type.startswith("multipart/form-data"):
            return envelope_error(400, 5006, "AiError: Bad input: required properties at '/' are 'multipart'")
        allowed = JSON_MODELS.get(model)
        if allowed is not None and set(call.fields) - allowed:
            return envelope_error(400, 5006, "AiError: Bad input: must NOT have additional properties")
        if not call.fields.get("prompt"):
            return envelope_error(400, 5006, "AiError: Bad input: must have required property 'prompt'")
        if self.nsfw:
            return envelope_error(400, 3030, "AiError: Input prompt contains NSFW content.")
        if model in BINARY_MODELS:
            fmt = BINARY_MODELS[model]
            media = "image/png" if fmt == "png" else "image/jpeg"
            return Response(image_bytes(fmt), media_type=media)
        if self.malformed:
            return Response('{"result": {"image": "iVBO', media_type="application/json")
        if self.failed_envelope:
            return envelope_error(200, 3043, "Internal server error")
        encoded = base64.b64encode(image_bytes("jpg")).decode()
        return JSONResponse({"result": {"image": encoded}, "success": True, "errors": [], "messages": []})
