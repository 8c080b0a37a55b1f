"""Tenant-visible errors carry stable messages: no local path, no exception repr or debug dump.

The detail goes to the log, with the generation or request id that ties it to the case.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from genplane.jobs.fetch import FileFetcher
from genplane.jobs.media import in_requested_format
from genplane.providers.base import ProviderError, ProviderOutput

from .conftest import Caller, Harness

LEAK_MARKERS = ("Generic", "LocalFileSystem", "Debug source", "os error", "source:", "BytesIO", " at 0x")


def assert_clean(text: str, tmp: Path) -> None:
    """No local path and no library or language internals in ``text``."""
    assert str(tmp) not in text, text
    assert "/tmp" not in text and "/files/" not in text, text
    for marker in LEAK_MARKERS:
        assert marker not in text, (marker, text)


@contextlib.contextmanager
def storage_blocked(files: Path) -> Iterator[None]:
    """A regular file where the store's directory should be: every write fails."""
    moved = files.with_name("files.moved")
    files.rename(moved)
    files.write_text("not a directory")
    try:
        yield
    finally:
        files.unlink()
        moved.rename(files)


@contextlib.contextmanager
def new_directories_refused(files: Path) -> Iterator[None]:
    """The files directory refuses new entries; its existing sub-directories stay writable.

    What a read-only or foreign-owned storage root looks like: a probe into an existing
    folder still works while every generation (which needs fresh folders) fails.
    """
    if os.geteuid() != 0:
        files.chmod(0o555)
        try:
            yield
        finally:
            files.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(files)], capture_output=True).returncode:
        pytest.skip("running as root without a working chattr: cannot make a directory read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(files)], check=True)


def health_leaks(data: dict[str, Any], tmp: Path) -> None:
    assert data["healthy"] is False
    assert isinstance(data["error"], str) and data["error"]
    assert_clean(orjson.dumps(data).decode(), tmp)


# -- storage failures ------------------------------------------------------------------------------


async def test_a_storage_failure_reaches_tenants_as_a_stable_message(
    harness: Harness, caller: Caller
) -> None:
    files = harness.services.settings.files_dir
    tmp = harness.services.settings.data_dir.resolve().parent
    with storage_blocked(files), capture_logs() as logs:
        r = await caller.create_image()
        gid = r.json()["data"]["generation_id"]
        record = await caller.wait(gid)
        health = (await caller.get("/v1/health/storage")).json()
    assert record["generation_status"] == "failed"
    assert record["generation_error_name"] == "bse_storage_error"
    assert record["generation_error"]
    assert_clean(orjson.dumps(record).decode(), tmp)
    health_leaks(health["data"], tmp)

    # The operator finds the detail in the log, tied to the generation and to the request.
    detailed = [e for e in logs if str(files) in str(e) or str(files.resolve()) in str(e)]
    assert any(e.get("generation_id") == gid for e in detailed), logs
    assert any(str(e.get("request_id", "")).startswith("req_") for e in detailed), logs
    assert all(e["log_level"] in ("warning", "error") for e in detailed)


async def test_health_storage_probes_what_generations_do(harness: Harness, caller: Caller) -> None:
    files = harness.services.settings.files_dir
    tmp = harness.services.settings.data_dir.resolve().parent
    # The probe has run before (an old probe leaves its folder behind, writable).
    assert (await caller.get("/v1/health/storage")).json()["data"]["healthy"] is True
    (files / "_health").mkdir(exist_ok=True)
    with new_directories_refused(files):
        gid = (await caller.create_image()).json()["data"]["generation_id"]
        record = await caller.wait(gid)
        assert record["generation_status"] == "failed", record
        assert record["generation_error_name"] == "bse_storage_error"
        health = (await caller.get("/v1/health/storage")).json()["data"]
    health_leaks(health, tmp)
    after = (await caller.get("/v1/health/storage")).json()["data"]
    assert after["healthy"] is True and "error" not in after
    leftovers = [p for p in files.rglob("*") if p.name != "_health"]
    assert leftovers == [], leftovers  # the probe leaves no file or folder behind


async def test_health_cache_error_is_stable(
    harness: Harness, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> bool:
        raise ConnectionError("Error 111 connecting to /var/run/redis/redis.sock. Connection refused.")

    monkeypatch.setattr(harness.services.limiter.storage, "check", broken)
    with capture_logs() as logs:
        data = (await caller.get("/v1/health/cache")).json()["data"]
    assert data["healthy"] is False and data["error"]
    assert "/var/run" not in data["error"] and "111" not in data["error"]
    assert any("redis.sock" in str(e) and e.get("request_id") for e in logs), logs


async def test_a_file_route_storage_failure_logs_the_detail_not_the_client(harness: Harness) -> None:
    files = harness.services.settings.files_dir
    key = f"3f2b8c4e-1d2a-4b5c-9e8f-0a1b2c3d4e5f/{'A' * 32}/0.png"
    with storage_blocked(files), capture_logs() as logs:
        r = await harness.client.get(f"/files/{key}")
    assert r.status_code == 500 and r.json()["error"] == "bse_storage_error"
    assert_clean(r.text, files.parent)
    assert any(str(files) in str(e) and e.get("request_id") for e in logs), logs


# -- images that do not decode --------------------------------------------------------------------


async def test_an_undecodable_provider_image_is_a_stable_message() -> None:
    garbage = ProviderOutput(ext="png", content_type="image/png", data=b"\x89PNG\r\n\x1a\n" + b"\x07" * 200)
    with capture_logs() as logs, pytest.raises(ProviderError) as info:
        await in_requested_format(garbage, "image", "jpg")
    assert_clean(info.value.message, Path("/nonexistent"))
    assert "identify" not in info.value.message
    assert any("BytesIO" in str(e) or "identify" in str(e) for e in logs), logs


async def test_an_undecodable_input_image_is_a_stable_message() -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def corrupt(request: Any) -> Response:
        return Response(b"\x89PNG\r\n\x1a\n" + b"\x07" * 200, media_type="image/png")

    app = Starlette(routes=[Route("/a.png", corrupt)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        fetcher = FileFetcher(client, allow_hosts=["cdn.test"])
        with capture_logs() as logs:
            with pytest.raises(Exception) as info:
                await fetcher.fetch_input_image(
                    "http://cdn.test/a.png", "generation_input_file", max_bytes=10_000_000
                )
            with pytest.raises(ProviderError) as output:
                await fetcher.fetch_output("http://cdn.test/a.png", max_bytes=10_000_000, kind="image")
    for text in (str(getattr(info.value, "text", info.value)), output.value.message):
        assert_clean(text, Path("/nonexistent"))
        assert "identify" not in text
    assert any("identify" in str(e) or "BytesIO" in str(e) for e in logs), logs


async def test_a_comfyui_python_error_reaches_tenants_as_node_and_type_only() -> None:
    from genplane.providers.comfyui import ComfyUI

    entry = {
        "status": {
            "status_str": "error",
            "messages": [
                [
                    "execution_error",
                    {
                        "node_type": "CheckpointLoaderSimple",
                        "exception_type": "FileNotFoundError",
                        "exception_message": "[Errno 2] No such file: '/opt/ComfyUI/models/x.safetensors'",
                    },
                ]
            ],
        }
    }
    adapter = ComfyUI(http=None, max_output_bytes=1)  # type: ignore[arg-type]  # not reached
    with capture_logs() as logs, pytest.raises(ProviderError) as info:
        await adapter._result(None, "p-1", entry)  # type: ignore[arg-type]
    assert "CheckpointLoaderSimple" in info.value.message and "FileNotFoundError" in info.value.message
    assert "/opt" not in info.value.message and "Errno" not in info.value.message
    assert any("/opt/ComfyUI" in str(e) and e.get("prompt_id") == "p-1" for e in logs), logs
