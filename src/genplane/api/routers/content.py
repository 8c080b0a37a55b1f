"""Operations 8-11: read, list, delete and cancel generations."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from genplane.accounts.scopes import Scope
from genplane.accounts.service import AuthContext
from genplane.api.deps import require, services
from genplane.api.prefer_wait import PreferHeader, applied, granted_wait, remaining, unless_disconnected
from genplane.api.responses import errors, ok
from genplane.api.schemas import (
    CancelData,
    DeleteData,
    Envelope,
    GenerationList,
    GenerationRecord,
    PageEnvelope,
)

router = APIRouter(prefix="/v1")
Reader = Annotated[AuthContext, Depends(require(Scope.GENERATION_READ))]
Deleter = Annotated[AuthContext, Depends(require(Scope.GENERATION_DELETE))]
GenerationId = Annotated[str, Path(max_length=64)]


@router.get(
    "/content/list",
    response_model=PageEnvelope[GenerationList],
    responses=errors(),
    operation_id="listContent",
)
async def list_content(
    request: Request,
    auth: Reader,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> object:
    records, total = await services(request).generations.list(auth.account_id, limit, offset)
    return ok(request, {"generations": records}, total=total, limit=limit, offset=offset)


@router.get(
    "/content/{generation_id}",
    response_model=Envelope[GenerationRecord],
    responses=errors(),
    operation_id="getContent",
)
async def get_content(
    request: Request, auth: Reader, generation_id: GenerationId, prefer: PreferHeader = None
) -> object:
    started = asyncio.get_running_loop().time()
    generations = services(request).generations
    seconds = granted_wait(prefer, services(request).settings)
    if seconds is None:
        return ok(request, await generations.get(auth.account_id, generation_id))
    # Counted once by the rate limit, like any request, however long it waits.
    waited, record = await unless_disconnected(
        request.receive, generations.wait(auth.account_id, generation_id, remaining(started, seconds))
    )
    if not waited:  # the client is gone: the answer goes nowhere, so it is only a plain read
        record = await generations.get(auth.account_id, generation_id)
    response = ok(request, record)
    response.headers.update(applied(seconds))
    return response


@router.delete(
    "/content/{generation_id}",
    response_model=Envelope[DeleteData],
    responses=errors(),
    operation_id="deleteContent",
)
async def delete_content(request: Request, auth: Deleter, generation_id: GenerationId) -> object:
    return ok(request, await services(request).generations.delete(auth.account_id, generation_id))


@router.post(
    "/content/generation/cancel/{generation_id}",
    response_model=Envelope[CancelData],
    responses=errors(409),
    operation_id="cancelGeneration",
)
async def cancel_generation(request: Request, auth: Deleter, generation_id: GenerationId) -> object:
    return ok(request, await services(request).generations.cancel(auth.account_id, generation_id))
