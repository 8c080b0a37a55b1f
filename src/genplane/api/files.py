"""Serves stored outputs at unguessable URLs, whichever store holds them.

These URLs are what records keep, so they never change; with presigning on, a GET is
answered with a redirect to a fresh presigned URL and the bucket sends the bytes.

Keys are checked against the one shape the store writes before storage is touched, so
a malformed key is a plain 404 like a missing file, never a storage error in the logs.
Files are streamed in chunks (a video may be hundreds of megabytes), with single byte
ranges for players that seek; HEAD answers the same headers without the body.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator

import structlog
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from genplane.api.byteranges import Unsatisfiable, byte_range
from genplane.api.deps import services
from genplane.contract.errors import ApiError
from genplane.storage.keys import is_file_key
from genplane.storage.store import SignedUrl, StorageError

router = APIRouter(include_in_schema=False)
log = structlog.get_logger("genplane.files")

STREAM_CHUNK_BYTES = 1024 * 1024  # at most about this much of a file is in memory per download


def _not_found() -> ApiError:
    return ApiError("bse_route_not_found", "No such file.")


def _redirect(signed: SignedUrl) -> Response:
    """Cached for half the URL's life, so a reused redirect still has time to be followed."""
    cache = f"private, max-age={signed.expires_in // 2}"
    return Response(status_code=307, headers={"Location": signed.url, "Cache-Control": cache})


async def _logged(chunks: AsyncIterator[bytes], request_id: str, key: str) -> AsyncIterator[bytes]:
    """The chunks; a read failing once the status line is sent can only cut the response
    short, so its detail is logged here, with the request id."""
    try:
        async for chunk in chunks:
            yield chunk
    except StorageError as exc:
        log.error("file_stream_failed", request_id=request_id, key=key, error=exc.summary, detail=exc.detail)
        raise


@router.api_route("/files/{key:path}", methods=["GET", "HEAD"])
async def get_file(request: Request, key: str) -> Response:
    if not is_file_key(key):
        log.debug("file_key_refused", request_id=request.state.request_id, key=key[:120])
        raise _not_found()
    store = services(request).store
    size = await store.size(key)
    if size is None:
        raise _not_found()
    headers = {
        "Cache-Control": "private, max-age=31536000, immutable",
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
    }
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    if request.method == "HEAD":  # Range applies to GET only
        return Response(media_type=media_type, headers={**headers, "Content-Length": str(size)})
    signed = await store.presigned_url(key)
    if signed is not None:  # the bucket serves the bytes, Range included
        return _redirect(signed)
    wanted = None
    if "if-range" not in request.headers:  # no validators are sent, so none can match
        try:
            wanted = byte_range(request.headers.getlist("range"), size)
        except Unsatisfiable:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, stop = (wanted.start, wanted.stop) if wanted else (0, size)
    chunks = await store.open(key, start, stop, STREAM_CHUNK_BYTES) if stop > start else None
    if chunks is None:
        if size == 0:
            return Response(media_type=media_type, headers=headers)
        raise _not_found()  # deleted since it was looked up
    chunks = _logged(chunks, request.state.request_id, key)
    headers["Content-Length"] = str(stop - start)
    if wanted is None:
        return StreamingResponse(chunks, media_type=media_type, headers=headers)
    headers["Content-Range"] = wanted.content_range(size)
    return StreamingResponse(chunks, status_code=206, media_type=media_type, headers=headers)
