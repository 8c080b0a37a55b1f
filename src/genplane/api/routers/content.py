"""Operations 8-11: read, list, delete and cancel generations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from genplane.accounts.scopes import Scope
from genplane.accounts.service import AuthContext
from genplane.api.deps import require, services
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
async def get_content(request: Request, auth: Reader, generation_id: GenerationId) -> object:
    return ok(request, await services(request).generations.get(auth.account_id, generation_id))


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
