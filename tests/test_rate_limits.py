"""Rate limits per account and route group (plan-dependent), their headers, the per-IP limit on
failed authentications, and the per-plan cap on in-flight generations.

Every limit here is small and set through settings; nothing depends on how fast the
requests go (a window is a minute, and every test finishes well inside one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import update

from genplane.api.openapi import route_table
from genplane.api.ratelimit import route_group
from genplane.db.models import Account
from genplane.settings import Settings
from tests.conftest import Caller, Harness

IMAGE = "/v1/generate/image/local/preview-image"
GID = "0" * 36  # a well-formed id no generation has

# One call per group, each needing only the full_access preset.
READ = ("GET", "/v1/status")
GENERATE = ("POST", IMAGE)
LIBRARY = ("GET", "/v1/library/models")


async def call(c: Caller, op: tuple[str, str]) -> httpx.Response:
    method, path = op
    if method == "POST":
        return await c.post(path, json={"generation_prompt": "a red fox"})
    return await c.get(path)


def assert_limited(r: httpx.Response, limit: int, group: str) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["error"] == "bse_rate_limit_exceeded"
    assert body["retryable"] is True
    assert body["details"]["limit"] == limit
    assert body["details"]["group"] == group
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 60
    assert body["details"]["retry_after_seconds"] == retry
    assert r.headers["X-RateLimit-Limit"] == str(limit)
    assert r.headers["X-RateLimit-Remaining"] == "0"


async def set_plan(h: Harness, c: Caller, plan: str) -> None:
    """Before the key's first request (the key cache remembers the plan for a few seconds)."""
    async with h.services.db.write() as s:
        await s.execute(update(Account).where(Account.id == c.account_id).values(plan=plan))


# --- route groups ----------------------------------------------------------------------------------


def test_every_operation_has_its_group(tmp_path: Any) -> None:
    from genplane.api.app import create_app

    app = create_app(Settings(data_dir=tmp_path / "d"))
    groups = {}
    for path, methods, _ in route_table(app):
        if not path.startswith("/v1/"):
            continue
        for method in methods:
            if method != "HEAD":
                groups[f"{method} {path.replace(':path}', '}')}"] = route_group(method, path)
    assert groups == {
        "POST /v1/generate/image/{model_identifier}": "generate",
        "POST /v1/generate/video/{model_identifier}": "generate",
        "GET /v1/status": "read",
        "GET /v1/usage": "read",
        "GET /v1/user/account": "read",
        "GET /v1/user/billing": "read",
        "GET /v1/estimate/{model_identifier}": "read",
        "GET /v1/content/{generation_id}": "read",
        "GET /v1/content/list": "read",
        "DELETE /v1/content/{generation_id}": "read",
        "POST /v1/content/generation/cancel/{generation_id}": "read",
        "GET /v1/library/providers": "library",
        "GET /v1/library/models": "library",
        "GET /v1/health/inference/providers": "library",
        "GET /v1/health/inference/models": "library",
        "GET /v1/health/storage": "library",
        "GET /v1/health/cache": "library",
    }


async def test_exhausting_read_leaves_generate_and_library_working(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(rate_limit_per_minute=3, run_worker=False)
    owner = await h.caller()
    for _ in range(3):
        assert (await call(owner, READ)).status_code == 200
    assert_limited(await call(owner, READ), 3, "read")
    # Every read operation shares the window, whatever the key.
    other_key = await h.key_for(owner, preset="full_access")
    assert_limited(await other_key.get(f"/v1/content/{GID}"), 3, "read")
    assert_limited(await other_key.get("/v1/estimate/local/preview-image"), 3, "read")

    created = await call(owner, GENERATE)
    assert created.status_code == 200, created.text
    assert created.headers["X-RateLimit-Remaining"] == "2"
    assert (await call(owner, LIBRARY)).status_code == 200
    # Another account's read window is its own.
    assert (await call(await h.caller(), READ)).status_code == 200


async def test_exhausting_generate_leaves_read_working(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(rate_limit_per_minute=2, run_worker=False)
    owner = await h.caller()
    for _ in range(2):
        assert (await call(owner, GENERATE)).status_code == 200
    limited = await call(owner, GENERATE)
    assert_limited(limited, 2, "generate")
    # The refused create reserved nothing and started nothing.
    listed = await owner.get("/v1/content/list")
    assert listed.status_code == 200
    assert listed.json()["total"] == 2
    assert listed.headers["X-RateLimit-Remaining"] == "1"
    assert (await call(owner, LIBRARY)).status_code == 200
    video = await owner.post(
        "/v1/generate/video/local/preview-video", json={"generation_prompt": "x", "generation_duration": 5}
    )
    assert_limited(video, 2, "generate")


async def test_headers_describe_the_group_of_the_request(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(
        run_worker=False, rate_limits={"standard": {"generate": 4, "read": 6, "library": 8}}
    )
    owner = await h.caller()
    seen: list[tuple[str, str, str]] = []
    for op in (READ, GENERATE, LIBRARY, READ, GENERATE, LIBRARY):
        r = await call(owner, op)
        assert r.status_code == 200, r.text
        seen.append((op[1], r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]))
        reset = int(r.headers["X-RateLimit-Reset"])
        assert time.time() - 1 <= reset <= time.time() + 61
    assert seen == [
        ("/v1/status", "6", "5"),
        (IMAGE, "4", "3"),
        ("/v1/library/models", "8", "7"),
        ("/v1/status", "6", "4"),
        (IMAGE, "4", "2"),
        ("/v1/library/models", "8", "6"),
    ]
    # Refused but authenticated answers carry the headers of their group too.
    monitor = await h.key_for(owner, preset="monitor_only")
    forbidden = await monitor.post(IMAGE, json={"generation_prompt": "x"})
    assert forbidden.status_code == 403
    assert (forbidden.headers["X-RateLimit-Limit"], forbidden.headers["X-RateLimit-Remaining"]) == ("4", "1")
    missing = await owner.get(f"/v1/content/{GID}")
    assert missing.status_code == 404
    assert (missing.headers["X-RateLimit-Limit"], missing.headers["X-RateLimit-Remaining"]) == ("6", "3")


async def test_limits_follow_the_plan(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(
        rate_limit_per_minute=5,
        run_worker=False,
        rate_limits={"studio": {"read": 2}, "*": {"read": 3, "library": 4}},
    )
    studio = await h.caller()
    await set_plan(h, studio, "studio")
    standard = await h.caller()  # no entry of its own: the "*" entry
    # studio's own entry leaves library out: the "*" entry's applies.
    for c, read_limit, library_limit in ((studio, 2, 4), (standard, 3, 4)):
        for _ in range(read_limit):
            assert (await call(c, READ)).headers["X-RateLimit-Limit"] == str(read_limit)
        assert_limited(await call(c, READ), read_limit, "read")
        r = await call(c, LIBRARY)
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == str(library_limit)
        created = await call(c, GENERATE)
        assert created.status_code == 200, created.text
        assert created.headers["X-RateLimit-Limit"] == "5"  # the default, for both


async def test_plan_resolution_in_settings(tmp_path: Any) -> None:
    s = Settings(
        data_dir=tmp_path,
        rate_limit_per_minute=7,
        rate_limits={"studio": {"generate": 100}, "*": {"generate": 50, "read": 60}},
        max_inflight_generations=9,
        max_inflight_generations_by_plan={"trial": 1, "*": 20},
    )
    assert s.rate_limit_for("studio", "generate") == 100
    assert s.rate_limit_for("studio", "read") == 60
    assert s.rate_limit_for("studio", "library") == 7
    assert s.rate_limit_for("standard", "generate") == 50
    assert s.max_inflight_for("trial") == 1
    assert s.max_inflight_for("standard") == 20
    assert Settings(data_dir=tmp_path).max_inflight_for("anything") == 50
    assert Settings(data_dir=tmp_path).rate_limit_for("anything", "generate") == 600


@pytest.mark.parametrize(
    "overrides",
    [
        {"rate_limits": {"standard": {"generation": 10}}},  # not a group
        {"rate_limits": {"standard": {"read": 0}}},
        {"max_inflight_generations_by_plan": {"standard": 0}},
    ],
)
def test_bad_limit_settings_are_refused(tmp_path: Any, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, **overrides)


def test_limit_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("GENPLANE_RATE_LIMITS", '{"standard": {"generate": 120, "read": 1200}}')
    monkeypatch.setenv("GENPLANE_MAX_INFLIGHT_GENERATIONS_BY_PLAN", '{"standard": 10}')
    s = Settings(data_dir=tmp_path)
    assert s.rate_limit_for("standard", "generate") == 120
    assert s.rate_limit_for("standard", "library") == 600
    assert s.max_inflight_for("standard") == 10


# --- Retry-After on every 429 ------------------------------------------------------------------------


async def test_every_429_carries_retry_after(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(
        rate_limit_per_minute=2, auth_failures_per_minute=1, max_inflight_generations=1, run_worker=False
    )
    owner = await h.caller()
    answers: dict[str, httpx.Response] = {}

    assert (await call(owner, GENERATE)).status_code == 200
    answers["bse_concurrency_limit_exceeded"] = await call(owner, GENERATE)
    for _ in range(2):
        await call(owner, READ)
    answers["bse_rate_limit_exceeded"] = await call(owner, READ)
    # Nested shape: the same headers.
    nested = await owner.get("/v1/status", headers={"X-BabySea-SDK-Name": "babysea-ts"})
    assert nested.json()["error"]["type"] == "rate_limit_exceeded"
    assert int(nested.headers["Retry-After"]) >= 1
    bad = {"Authorization": "Bearer bye_us_" + "Q" * 43}
    assert (await h.client.get("/v1/status", headers=bad)).status_code == 401
    answers["bse_auth_rate_limited"] = await h.client.get("/v1/status", headers=bad)

    for name, r in answers.items():
        assert r.status_code == 429, (name, r.text)
        assert r.json()["error"] == name
        assert r.json()["retryable"] is True
        assert int(r.headers["Retry-After"]) >= 1, name
        assert r.json()["details"]["retry_after_seconds"] == int(r.headers["Retry-After"]), name
        # With Retry-After, the limit that refused: clients honour the one only with the other.
        assert r.headers["X-RateLimit-Remaining"] == "0", name
        reset = int(r.headers["X-RateLimit-Reset"])
        assert time.time() < reset <= time.time() + int(r.headers["Retry-After"]) + 1, name
    assert answers["bse_concurrency_limit_exceeded"].headers["X-RateLimit-Limit"] == "1"  # the cap
    assert answers["bse_rate_limit_exceeded"].headers["X-RateLimit-Limit"] == "2"
    assert answers["bse_auth_rate_limited"].headers["X-RateLimit-Limit"] == "1"


async def test_a_failing_credential_is_refused_before_any_key_lookup(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(auth_failures_per_minute=2)
    owner = await h.caller()
    bad = {"Authorization": "Bearer bye_us_" + "Q" * 43}
    for _ in range(2):
        assert (await h.client.get("/v1/status", headers=bad)).status_code == 401
    lookups = 0
    original = h.services.authenticator.authenticate

    async def counting(*args: Any) -> Any:
        nonlocal lookups
        lookups += 1
        return await original(*args)

    h.services.authenticator.authenticate = counting  # type: ignore[method-assign]
    # The same credential from that address is refused without being looked at...
    r = await h.client.get("/v1/status", headers=bad)
    assert r.status_code == 429
    assert r.json()["error"] == "bse_auth_rate_limited"
    assert lookups == 0
    # ...while a good key from the same address is served.
    assert (await h.client.get("/v1/status", headers=owner.headers)).status_code == 200
    assert lookups == 1


# --- in-flight cap per plan ----------------------------------------------------------------------


async def test_inflight_cap_follows_the_plan(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(
        run_worker=False, max_inflight_generations=3, max_inflight_generations_by_plan={"trial": 1}
    )
    trial = await h.caller()
    await set_plan(h, trial, "trial")
    standard = await h.caller()

    assert (await call(trial, GENERATE)).status_code == 200
    refused = await call(trial, GENERATE)
    assert refused.status_code == 429
    body = refused.json()
    assert body["error"] == "bse_concurrency_limit_exceeded"
    assert body["details"]["limit"] == 1
    assert refused.headers["Retry-After"] == "1"

    for _ in range(3):
        assert (await call(standard, GENERATE)).status_code == 200
    refused = await call(standard, GENERATE)
    assert refused.status_code == 429
    assert refused.json()["details"]["limit"] == 3

    # The refused creates reserved nothing: each account holds exactly its accepted ones.
    for c, accepted in ((trial, 1), (standard, 3)):
        assert (await c.get("/v1/content/list")).json()["total"] == accepted


async def test_inflight_cap_frees_up_when_a_generation_ends(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(
        run_worker=False, max_inflight_generations=5, max_inflight_generations_by_plan={"*": 1}
    )
    owner = await h.caller()
    first = await call(owner, GENERATE)
    assert first.status_code == 200
    assert (await call(owner, GENERATE)).status_code == 429
    gid = first.json()["data"]["generation_id"]
    assert (await owner.post(f"/v1/content/generation/cancel/{gid}")).status_code == 200
    assert (await call(owner, GENERATE)).status_code == 200
