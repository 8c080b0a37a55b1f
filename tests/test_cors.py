"""Browser access (CORS): preflights for the contract's operations, readable answers.

A browser preflights every call the official SDK makes (``Authorization`` and the
``X-BabySea-SDK-*`` headers are not CORS-safelisted), without the key; the answer decides
whether the page's call is made at all, and the headers of the real answer decide what the
page may read of it (the request id, the rate-limit headers the SDK's retries follow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from genplane.api.openapi import app_spec
from genplane.settings import Settings
from tests.conftest import Caller, Harness

ORIGIN = "https://app.example.com"
SDK_HEADERS = (
    "authorization, content-type, idempotency-key, x-babysea-sdk-name, x-babysea-sdk-version, "
    "x-babysea-sdk-runtime, x-babysea-sdk-runtime-version"
)
EXPOSED = {
    "x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
    "retry-after", "idempotency-replayed",
}


def concrete(path: str) -> str:
    """A path of the template, as a browser would call it."""
    return (
        path.replace("{model_identifier}", "local/preview-image")
        .replace("{generation_id}", "0" * 36)
    )


def contract_operations(h: Harness) -> list[tuple[str, str]]:
    doc = app_spec(h.app)
    return [
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "delete")
    ]


def preflight_headers(method: str, origin: str = ORIGIN) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": SDK_HEADERS,
    }


async def test_every_operation_answers_its_preflight(harness: Harness) -> None:
    operations = contract_operations(harness)
    assert len(operations) == 17
    for method, path in operations:
        r = await harness.client.options(concrete(path), headers=preflight_headers(method))
        assert r.status_code == 204, (method, path, r.status_code, r.text)
        assert r.content == b""
        assert r.headers["access-control-allow-origin"] == "*"
        assert method in r.headers["access-control-allow-methods"].split(", ")
        allowed = {h.strip() for h in r.headers["access-control-allow-headers"].lower().split(",")}
        assert {h.strip() for h in SDK_HEADERS.split(",")} <= allowed
        assert "prefer" in allowed
        assert int(r.headers["access-control-max-age"]) > 0


async def test_a_preflight_for_no_operation_gets_the_contracts_404(harness: Harness) -> None:
    for method, path in (("GET", "/v1/nothing-here"), ("PUT", "/v1/status"), ("GET", "/openapi.json")):
        r = await harness.client.options(path, headers=preflight_headers(method))
        assert r.status_code in (404, 405), (method, path, r.text)
        assert r.json()["error"] == "bse_route_not_found"
        assert "access-control-allow-methods" not in r.headers


async def test_answers_are_readable_by_the_page(harness: Harness, caller: Caller) -> None:
    ok = await caller.get("/v1/status", headers={"Origin": ORIGIN})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip() for h in ok.headers["access-control-expose-headers"].split(",")}
    assert EXPOSED <= exposed
    assert ok.headers["x-request-id"]
    # Errors as well: an SDK in a browser must see the code, not an opaque failure.
    bad = await harness.client.get(
        "/v1/status", headers={"Origin": ORIGIN, "Authorization": "Bearer bye_us_" + "Q" * 43}
    )
    assert bad.status_code == 401
    assert bad.headers["access-control-allow-origin"] == "*"
    assert bad.json()["error"] == "bse_invalid_api_key"
    # Without an Origin (a server-side client) nothing is added.
    plain = await caller.get("/v1/status")
    assert "access-control-allow-origin" not in plain.headers


async def test_listed_origins_only(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(cors_origins=f"{ORIGIN},http://localhost:3000")
    owner = await h.caller()
    r = await h.client.options("/v1/status", headers=preflight_headers("GET"))
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    refused = await h.client.options("/v1/status", headers=preflight_headers("GET", "https://evil.example"))
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    ok = await owner.get("/v1/status", headers={"Origin": "http://localhost:3000"})
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = await owner.get("/v1/status", headers={"Origin": "https://evil.example"})
    assert other.status_code == 200  # CORS is the browser's to enforce; the page cannot read it
    assert "access-control-allow-origin" not in other.headers


async def test_cors_can_be_turned_off(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(cors_origins="")
    owner = await h.caller()
    r = await h.client.options("/v1/status", headers=preflight_headers("GET"))
    assert r.json()["error"] == "bse_route_not_found"
    ok = await owner.get("/v1/status", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in ok.headers


def test_origins_setting_is_checked(tmp_path: Any) -> None:
    listed = Settings(data_dir=tmp_path, cors_origins='["https://a.example", "http://b.example:8080"]')
    assert listed.cors_origins == ["https://a.example", "http://b.example:8080"]
    assert Settings(data_dir=tmp_path).cors_origins == ["*"]
    for bad in ("app.example.com", "https://a.example/path", "ftp://a.example"):
        with pytest.raises(ValidationError, match="cors_origins"):
            Settings(data_dir=tmp_path, cors_origins=bad)
