"""Operations 5-7: estimate, and create an image or a video generation."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from starlette.responses import Response

from genplane.accounts.scopes import Scope
from genplane.accounts.service import AuthContext
from genplane.api.deps import require, services
from genplane.api.prefer_wait import PreferHeader, applied, granted_wait, remaining, unless_disconnected
from genplane.api.responses import errors, ok
from genplane.api.schemas import CreateData, Envelope, EstimateData
from genplane.contract.errors import ApiError
from genplane.credits.ledger import balance_millis
from genplane.credits.money import to_credits
from genplane.generations.idempotency import KEY_RE, check_key
from genplane.generations.request import MAX_BODY_BYTES, MAX_ESTIMATE_COUNT, check_estimate

log = structlog.get_logger("genplane.api")
router = APIRouter(prefix="/v1")
ModelId = Annotated[str, Path(description="Model identifier with its slash, e.g. bfl/flux-schnell.")]


async def read_body(request: Request) -> bytes:
    """Read at most MAX_BODY_BYTES, also when no Content-Length was sent."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError("bse_payload_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _create(
    request: Request,
    auth: AuthContext,
    media: str,
    model_identifier: str,
    idempotency_key: str | None,
    prefer: str | None,
) -> Response:
    started = asyncio.get_running_loop().time()
    key = check_key(idempotency_key) if idempotency_key is not None else None
    seconds = granted_wait(prefer, services(request).settings)  # refused before anything is created
    raw = await read_body(request)
    result = await services(request).generations.create(
        auth,
        media,
        model_identifier,
        raw,
        path=request.url.path,
        idempotency_key=key,
        request_id=request.state.request_id,
    )
    headers = {}
    if result.replayed:
        headers["Idempotency-Replayed"] = "true"
    if seconds is not None:
        await _wait_for_terminal(request, auth, result.body, remaining(started, seconds))
        headers.update(applied(seconds))
    return Response(
        result.body, status_code=result.status_code, media_type="application/json", headers=headers
    )


async def _wait_for_terminal(request: Request, auth: AuthContext, body: bytes, seconds: float) -> None:
    """Hold a create's answer until its generation is terminal, ``seconds`` pass or the client goes.

    The answer stays the create envelope (what SDKs parse), a replay's too: the next read of
    the record finds it terminal at once. The generation exists whatever happens here, so a
    failure while waiting ends the wait; it must not turn the create into an error a client
    would retry.
    """
    try:
        generation_id = orjson.loads(body)["data"]["generation_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return  # a stored answer without a generation: nothing to wait for
    if not isinstance(generation_id, str):
        return
    try:
        await unless_disconnected(
            request.receive, services(request).generations.wait(auth.account_id, generation_id, seconds)
        )
    except Exception as exc:
        log.warning("create_wait_failed", generation_id=generation_id, error=repr(exc))


# 503: no configured provider here serves the model (bse_provider_unavailable), checked before
# anything is reserved. Provider failures after acceptance land in the record, not here.
_CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **errors(402, 409, 422, 503),
    200: {
        "links": {
            name: {
                "operationId": operation_id,
                "parameters": {"generation_id": "$response.body#/data/generation_id"},
                "description": description,
            }
            for name, operation_id, description in (
                ("GetGeneration", "getContent", "The generation's record; poll it until terminal."),
                ("CancelGeneration", "cancelGeneration", "Cancel the generation while it is not terminal."),
                ("DeleteGeneration", "deleteContent", "Delete the generation and its stored files."),
            )
        }
    },
}
# The body is read and checked by the service (size cap, then the chosen model's rules),
# so it is declared for the OpenAPI document only.
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationRequest"}}},
    }
}
IdemKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        pattern=KEY_RE.pattern,
        description="Sent again with the same body within 24 h, replays the first response.",
    ),
]
Writer = Annotated[AuthContext, Depends(require(Scope.GENERATION_WRITE))]


@router.post(
    "/generate/image/{model_identifier:path}",
    response_model=Envelope[CreateData],
    responses=_CREATE_RESPONSES,
    operation_id="generateImage",
    openapi_extra=_BODY_DOC,
)
async def generate_image(
    request: Request,
    auth: Writer,
    model_identifier: ModelId,
    idempotency_key: IdemKey = None,
    prefer: PreferHeader = None,
) -> Response:
    return await _create(request, auth, "image", model_identifier, idempotency_key, prefer)


@router.post(
    "/generate/video/{model_identifier:path}",
    response_model=Envelope[CreateData],
    responses=_CREATE_RESPONSES,
    operation_id="generateVideo",
    openapi_extra=_BODY_DOC,
)
async def generate_video(
    request: Request,
    auth: Writer,
    model_identifier: ModelId,
    idempotency_key: IdemKey = None,
    prefer: PreferHeader = None,
) -> Response:
    return await _create(request, auth, "video", model_identifier, idempotency_key, prefer)


@router.get(
    "/estimate/{model_identifier:path}",
    response_model=Envelope[EstimateData],
    responses=errors(422),
    operation_id="estimateCost",
)
async def estimate(
    request: Request,
    auth: Annotated[AuthContext, Depends(require(Scope.LIBRARY_READ))],
    model_identifier: ModelId,
    count: Annotated[
        int, Query(description=f"Outputs or generations; clamped to 1..{MAX_ESTIMATE_COUNT}.")
    ] = 1,
    duration: Annotated[int | None, Query(ge=1, le=600, description="Video seconds.")] = None,
    resolution: Annotated[str | None, Query(max_length=20)] = None,
    audio: Annotated[bool, Query()] = False,
) -> object:
    svc = services(request)
    est = check_estimate(svc.catalog, model_identifier, count, duration, resolution, audio)
    data: dict[str, object] = {
        "model_identifier": est.model.model_identifier,
        "model_type": est.model.model_type,
        "assets_count": est.count,
    }
    if est.model.model_type == "video":
        data.update(
            cost_per_second=float(est.unit_price),
            duration_seconds=est.options.duration,
            resolution=est.options.resolution,
        )
    balance = await balance_millis(svc.db, auth.account_id)
    data.update(
        cost_per_generation=to_credits(est.per_generation_millis),
        cost_total_consumed=to_credits(est.total_millis),
        credit_balance=to_credits(balance),
        credit_balance_can_afford=balance >= est.total_millis,
        credit_balance_max_affordable=est.affordable(balance),
    )
    return ok(request, data)
