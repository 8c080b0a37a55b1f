"""Serves stored outputs at unguessable URLs (local storage only; S3 uses presigned URLs)."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Request
from starlette.responses import Response

from genplane.api.deps import services
from genplane.errors import ApiError

router = APIRouter(include_in_schema=False)


@router.get("/files/{key:path}")
async def get_file(request: Request, key: str) -> Response:
    data = await services(request).store.read(key)
    if data is None:
        raise ApiError("bse_route_not_found", "No such file.")
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(
        data, media_type=media_type, headers={"Cache-Control": "private, max-age=31536000, immutable"}
    )
