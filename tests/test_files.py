"""The /files/ route: strict keys, HEAD, headers, streaming and byte ranges."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message
from structlog.testing import capture_logs

from .conftest import Caller, Harness

GID = "3f2b8c4e-1d2a-4b5c-9e8f-0a1b2c3d4e5f"


@dataclass
class Raw:
    """A response as the app sent it, message by message."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


async def asgi(
    app: FastAPI, raw_path: bytes, method: str = "GET", headers: dict[str, str] | None = None
) -> Raw:
    """Drive the app with this exact path (an HTTP client would normalise ``..`` away)."""
    out = Raw()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body" and message.get("body"):
            out.chunks.append(bytes(message["body"]))

    await app(scope, receive, send)
    return out


def loud(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("log_level") not in ("debug",)]


async def stored(h: Harness, data: bytes, ext: str = "mp4", content_type: str = "video/mp4") -> str:
    """A file written through the store, as a generation's output is; returns its URL path."""
    f = await h.services.store.put(GID, 0, ext, data, content_type)
    return httpx.URL(f.url).path


@pytest.fixture(params=["local", "s3"])
async def idle(request: pytest.FixtureRequest, harness_factory: Callable[..., Any]) -> Harness:
    """No worker: nothing sweeps the files these tests write straight through the store.
    Each store in turn: the route must serve a file the same whichever one holds it."""
    storage = request.getfixturevalue("s3_settings") if request.param == "s3" else {}
    h: Harness = await harness_factory(run_worker=False, **storage)
    return h


# -- 1. keys that cannot be a stored file are 404, quietly, before storage -----------------------

MALFORMED = [
    b"/files/",
    b"/files/a%00.png",
    b"/files/%2e/x",
    b"/files/%2e%2e/x",
    b"/files/../x",
    b"/files/../../etc/passwd",
    b"/files/a\\b.png",
    b"/files/" + GID.encode() + b"\\tok\\0.png",
    b"/files//x.png",
    b"/files/" + GID.encode() + b"//0.png",
    b"/files/" + GID.encode() + b"/" + b"A" * 32 + b"/",
    b"/files/" + b"a" * 3000,
    b"/files/" + GID.encode() + b"/" + b"A" * 32 + b"/0.png" + b"x" * 3000,
    b"/files/_health",
    b"/files/_health/0123456789abcdef",
    b"/files/" + GID.encode(),
    b"/files/" + GID.encode() + b"/",
    b"/files/" + GID.encode() + b"/" + b"A" * 32,
    b"/files/" + GID.encode() + b"/" + b"A" * 32 + b"/0.png/",
    b"/files/" + GID.encode() + b"/" + b"A" * 32 + b"/00.png",
    b"/files/" + GID.encode() + b"/" + b"A" * 32 + b"/0.PNG",
    b"/files/" + GID.encode() + b"/" + b"A" * 31 + b"./0.png",
    b"/files/" + GID.upper().encode() + b"/" + b"A" * 32 + b"/0.png",
    b"/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    b"/files/" + GID.encode() + b"/" + b"A" * 32 + b"/0.png%00",
    b"/files/" + GID.encode() + b"/%2e%2e/" + b"A" * 32 + b"/0.png",
]


async def test_malformed_keys_are_404_and_log_nothing(idle: Harness) -> None:
    await stored(idle, b"x" * 10, "png", "image/png")
    failures = []
    for raw in MALFORMED:
        for method in ("GET", "HEAD"):
            with capture_logs() as logs:
                r = await asgi(idle.app, raw, method)
            if r.status != 404:
                failures.append(f"{method} {raw[:80]!r}: {r.status} {r.body[:200]!r}")
                continue
            if method == "GET":
                body = httpx.Response(404, content=r.body).json()
                if body.get("error") != "bse_route_not_found" or body.get("retryable") is not False:
                    failures.append(f"{raw[:80]!r}: {body}")
            if loud(logs):
                failures.append(f"{method} {raw[:80]!r} logged {loud(logs)}")
    assert not failures, "\n".join(failures)


async def test_a_well_formed_key_that_is_not_stored_is_404(idle: Harness) -> None:
    r = await idle.client.get(f"/files/{GID}/{'A' * 32}/0.png")
    assert r.status_code == 404 and r.json()["error"] == "bse_route_not_found"
    assert (await idle.client.head(f"/files/{GID}/{'A' * 32}/0.png")).status_code == 404


# -- 2./3. HEAD and headers -----------------------------------------------------------------------


async def test_head_answers_like_get_without_a_body(harness: Harness, caller: Caller) -> None:
    gid = (await caller.create_image()).json()["data"]["generation_id"]
    record = await caller.wait(gid)
    url = httpx.URL(record["generation_output_file"][0]).path
    got = await caller.client.get(url)
    head = await caller.client.head(url)
    assert got.status_code == 200 and head.status_code == 200
    assert head.content == b""
    same = ("content-type", "content-length", "cache-control", "accept-ranges", "x-content-type-options")
    for name in same:
        assert head.headers.get(name) == got.headers.get(name), name
    assert int(head.headers["content-length"]) == len(got.content) > 0
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-type"] == "image/png"


# -- 4. streaming and ranges ------------------------------------------------------------------------

VIDEO_BYTES = 12 * 1024 * 1024 + 12345


@pytest.fixture
def video() -> bytes:
    return os.urandom(VIDEO_BYTES)


async def test_a_video_sized_file_streams_in_chunks(idle: Harness, video: bytes) -> None:
    path = await stored(idle, video)
    r = await asgi(idle.app, path.encode())
    assert r.status == 200
    assert r.body == video
    # Sent piece by piece as it is read: no message carries more than a small part of the file.
    assert len(r.chunks) >= 4
    assert max(len(c) for c in r.chunks) <= len(video) // 4
    assert r.headers["content-length"] == str(len(video))
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["x-content-type-options"] == "nosniff"

    # The same through an HTTP client, streamed.
    async with idle.client.stream("GET", path) as resp:
        assert resp.status_code == 200
        received = b"".join([part async for part in resp.aiter_raw()])
    assert received == video


async def test_single_ranges_are_206(idle: Harness, video: bytes) -> None:
    path = await stored(idle, video)
    size = len(video)
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=0-99": (0, 99),
        "bytes=1000-": (1000, size - 1),
        "bytes=-500": (size - 500, size - 1),
        f"bytes=-{size + 10}": (0, size - 1),
        f"bytes={size - 10}-{size + 1000}": (size - 10, size - 1),
        f"bytes=5000000-{5000000 + 3 * 1024 * 1024}": (5000000, 5000000 + 3 * 1024 * 1024),
        "BYTES=10-19": (10, 19),
    }
    for header, (start, end) in cases.items():
        r = await idle.client.get(path, headers={"Range": header})
        assert r.status_code == 206, (header, r.status_code)
        assert r.headers["content-range"] == f"bytes {start}-{end}/{size}", header
        assert r.headers["content-length"] == str(end - start + 1), header
        assert r.content == video[start : end + 1], header
        assert r.headers["accept-ranges"] == "bytes"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-type"] == "video/mp4"
    # A large range streams too.
    raw = await asgi(idle.app, path.encode(), headers={"Range": "bytes=1-"})
    assert raw.status == 206 and raw.body == video[1:] and len(raw.chunks) > 1


async def test_unsatisfiable_ranges_are_416(idle: Harness, video: bytes) -> None:
    path = await stored(idle, video)
    size = len(video)
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0"):
        r = await idle.client.get(path, headers={"Range": header})
        assert r.status_code == 416, (header, r.status_code)
        assert r.headers["content-range"] == f"bytes */{size}", header
        assert len(r.content) < 1000


async def test_multi_and_malformed_ranges_serve_the_whole_file(idle: Harness) -> None:
    data = os.urandom(70_000)
    path = await stored(idle, data)
    for header in (
        "bytes=0-1,5-6",
        "bytes=5-1",
        "bytes=abc",
        "items=0-5",
        "bytes=",
        "bytes=-",
        "bytes=1-2-3",
        "bytes= 1-2",
        "bytes=+1-2",
        "bytes=" + "9" * 40 + "-",
    ):
        r = await idle.client.get(path, headers={"Range": header})
        assert r.status_code == 200, (header, r.status_code)
        assert r.content == data, header
        assert r.headers["content-length"] == str(len(data))
        assert "content-range" not in r.headers
    # HEAD ignores Range.
    head = await idle.client.head(path, headers={"Range": "bytes=0-9"})
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
