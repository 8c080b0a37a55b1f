"""Estimate and create share one set of request rules; the cache health names its backend."""

from __future__ import annotations

from typing import Any

import pytest
from limits.aio.storage import MemoryStorage, RedisStorage

from tests.conftest import Caller, Harness

IMAGE = "local/preview-image"
VIDEO = "local/preview-video"
# query parameter of the estimate -> field of the create body
NAMES = {
    "duration": "generation_duration",
    "resolution": "generation_resolution",
    "audio": "generation_generate_audio",
}

# (model, estimate query, create body): the same bad value sent to each path
BAD_INPUTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "unknown model": ("nobody/no-such-model", {}, {}),
    "video duration not listed": (VIDEO, {"duration": 9}, {"generation_duration": 9}),
    "video resolution not listed": (
        VIDEO,
        {"duration": 1, "resolution": "4320p"},
        {"generation_duration": 1, "generation_resolution": "4320p"},
    ),
    "duration on an image model": (IMAGE, {"duration": 2}, {"generation_duration": 2}),
    "resolution on an image model": (IMAGE, {"resolution": "720p"}, {"generation_resolution": "720p"}),
    "audio on an image model": (IMAGE, {"audio": "true"}, {"generation_generate_audio": True}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_estimate_and_create_refuse_alike(caller: Caller, case: str) -> None:
    model, query, body = BAD_INPUTS[case]
    estimate = await caller.get(f"/v1/estimate/{model}", params=query)
    media = "video" if model == VIDEO else "image"
    create = await caller.post(f"/v1/generate/{media}/{model}", json={"generation_prompt": "fox", **body})
    assert estimate.status_code == create.status_code >= 400, (estimate.text, create.text)
    e, c = estimate.json(), create.json()
    assert (e["error"], e["code"]) == (c["error"], c["code"])
    e_details, c_details = dict(e.get("details") or {}), dict(c.get("details") or {})
    field = e_details.pop("field", None)
    assert NAMES.get(field, field) == c_details.pop("field", None)  # each names what its caller sent
    assert e_details == c_details
    message = e["message"]
    if field is not None:
        message = message.replace(f"'{field}'", f"'{NAMES[field]}'").replace(f"{field}=", f"{NAMES[field]}=")
    assert message == c["message"]


async def test_cache_health_names_the_memory_backend(harness: Harness, caller: Caller) -> None:
    assert isinstance(harness.services.limiter.storage, MemoryStorage)
    d = (await caller.get("/v1/health/cache")).json()["data"]
    assert d["service"] == "memory" and d["healthy"] is True


async def test_cache_health_names_a_redis_backend(
    harness: Harness, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any storage of the ``limits`` Redis family, whatever its class is called."""
    storage = object.__new__(RedisStorage)  # no client installed here: never connected

    async def check() -> bool:
        return True

    monkeypatch.setattr(storage, "check", check, raising=False)
    monkeypatch.setattr(harness.services.limiter, "storage", storage)
    d = (await caller.get("/v1/health/cache")).json()["data"]
    assert d["service"] == "redis" and d["healthy"] is True
