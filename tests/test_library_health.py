"""Operations 12-17 over HTTP (library and live health), plus envelope rules every response obeys."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from genplane.catalog.loader import DATA_DIR
from genplane.providers.base import ProviderError, ProviderJob, ProviderResult
from genplane.providers.local import LocalProvider
from tests.conftest import Caller, Harness

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _packaged(key: str, id_field: str) -> dict[str, dict[str, Any]]:
    """The packaged catalogue read straight from its YAML files (later files replace earlier ids)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(DATA_DIR).glob("*.yaml")):
        for item in (yaml.safe_load(path.read_text()) or {}).get(key, []):
            out[item[id_field]] = item
    return out


MODELS = _packaged("models", "model_identifier")
PROVIDERS = _packaged("providers", "provider_id")
TERMINAL = {"succeeded", "failed", "canceled"}


def success(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "success"
    assert body["request_id"] == r.headers["X-Request-Id"]
    assert ISO_MS.match(body["timestamp"]), body["timestamp"]
    data: dict[str, Any] = body["data"]
    return data


def route_not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    body = r.json()
    assert set(body) >= {"status", "request_id", "error", "message", "retryable", "code"}
    assert body["status"] == "error"
    assert body["error"] == "bse_route_not_found"
    assert body["code"] == "BSE2017"
    assert body["retryable"] is False
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"].startswith("req_")
    assert r.headers["X-Request-Id"] == body["request_id"]
    assert "traceback" not in r.text.lower()


# -- library ----------------------------------------------------------------------------------


async def test_library_providers(caller: Caller) -> None:
    d = success(await caller.get("/v1/library/providers"))
    assert d["providers_total"] == len(d["providers"]) == len(PROVIDERS)
    by_id = {p["provider_id"]: p for p in d["providers"]}
    assert set(by_id) == set(PROVIDERS)
    local = by_id["local"]
    assert local["provider_status"] == "active"
    assert {p["provider_status"] for p in d["providers"]} <= {"active", "unavailable"}
    for field in ("provider_name", "provider_description", "provider_website", "provider_docs"):
        assert isinstance(local[field], str) and local[field], field
        assert local[field].split() == str(PROVIDERS["local"][field]).split(), field
    impl = local["babysea_implementation"]
    assert set(impl) >= {
        "delivery_method",
        "cancel_method",
        "webhook_verification",
        "failover_strategy",
        "health_monitoring",
        "supported_media_types",
        "supported_models_total",
    }
    assert impl["delivery_method"] in ("webhook_with_polling", "synchronous", "polling")
    assert impl["failover_strategy"] == "sequential_provider_chain"
    assert impl["health_monitoring"] == "circuit_breaker"
    assert sorted(impl["supported_media_types"]) == ["image", "video"]
    assert impl["supported_models_total"] == sum("local" in m["providers"] for m in MODELS.values())


async def test_library_models(caller: Caller) -> None:
    d = success(await caller.get("/v1/library/models"))
    assert d["models_total"] == len(d["models"]) == len(MODELS)
    by_id = {m["model_identifier"]: m for m in d["models"]}
    assert set(by_id) == set(MODELS)
    for ident, entry in MODELS.items():
        m = by_id[ident]
        assert m["model_type"] == entry["model_type"]
        assert m["model_pricing"] == entry["model_pricing"]
        assert m["model_supported_provider"] == list(entry["providers"])
        assert m["specific_schema"] == entry.get("specific_schema", [])
        schema = m["schema"]
        want = entry["schema"]
        assert schema["generation_prompt"] is want.get("generation_prompt", True)
        assert schema["generation_ratio"] == want["generation_ratio"]
        assert schema["generation_output_format"] == want["generation_output_format"]
        assert schema["generation_output_number"] == want["generation_output_number"]
        assert schema["generation_input_file"] is want.get("generation_input_file", False)
        if entry["model_type"] == "video":
            assert schema["generation_duration"] == want["generation_duration"]
            assert schema["generation_resolution"] == want["generation_resolution"]
            assert schema.get("generation_generate_audio") == want.get("generation_generate_audio")
        else:
            for video_only in ("generation_duration", "generation_resolution", "generation_generate_audio"):
                assert video_only not in schema, (ident, video_only)
            assert isinstance(m["model_pricing"], int | float)


async def test_library_and_health_scopes(harness: Harness, caller: Caller) -> None:
    monitor = await harness.key_for(caller, preset="monitor_only")
    generate_only = await harness.key_for(caller, preset="generate_only")
    for path in ("/v1/library/providers", "/v1/library/models"):
        success(await monitor.get(path))
        success(await generate_only.get(path))
    for path in (
        "/v1/health/inference/providers",
        "/v1/health/inference/models",
        "/v1/health/storage",
        "/v1/health/cache",
    ):
        success(await monitor.get(path))
        r = await generate_only.get(path)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "bse_insufficient_permissions"
        assert r.json()["details"]["required_scope"] == "health:read"


async def test_an_unconfigured_provider_shows_as_unavailable(harness: Harness, caller: Caller) -> None:
    class Unconfigured(LocalProvider):
        def configured(self) -> bool:
            return False

    harness.services.providers["local"] = Unconfigured()
    lib = success(await caller.get("/v1/library/providers"))
    assert {p["provider_id"]: p["provider_status"] for p in lib["providers"]}["local"] == "unavailable"
    models = success(await caller.get("/v1/health/inference/models"))
    assert models["healthy"] is False
    local_models = [m for m in models["models"] if "local" in m["providers"]]
    assert local_models
    assert all(m["providers"]["local"]["available"] is False for m in local_models)
    providers = success(await caller.get("/v1/health/inference/providers"))
    assert {p["provider"]: p["status"] for p in providers["providers"]}["local"] == "unknown"


# -- health: inference --------------------------------------------------------------------------


async def _run_generations(caller: Caller, prompts: list[str]) -> list[dict[str, Any]]:
    records = []
    for prompt in prompts:  # one after another, so "the last attempt" is well defined
        r = await caller.create_image({"generation_prompt": prompt})
        assert r.status_code == 200, r.text
        records.append(await caller.wait(r.json()["data"]["generation_id"]))
    return records


def _local(d: dict[str, Any]) -> dict[str, Any]:
    rows = {p["provider"]: p for p in d["providers"]}
    row: dict[str, Any] = rows["local"]
    return row


async def test_health_providers_counts_real_attempts(caller: Caller) -> None:
    d = success(await caller.get("/v1/health/inference/providers"))
    assert d["service"] == "providers"
    assert d["providers_total"] == len(d["providers"]) == len(PROVIDERS)
    row = _local(d)
    assert row["window"]["total_attempts"] == 0
    # Configured and nothing failed: "unknown" would tell every tenant nobody used it lately.
    assert row["status"] == "healthy"

    records = await _run_generations(caller, ["one", "two", "three"])
    assert [r["generation_status"] for r in records] == ["succeeded"] * 3

    d = success(await caller.get("/v1/health/inference/providers"))
    assert d["healthy"] is True
    row = _local(d)
    assert set(row) >= {"provider", "status", "failure_rate", "window"}
    assert row["status"] == "healthy"
    assert row["failure_rate"] == 0
    window = row["window"]
    assert window["total_attempts"] == 3
    assert window["successes"] == 3
    assert window["failures"] == 0
    assert isinstance(window["duration_seconds"], int | float) and window["duration_seconds"] > 0


async def test_health_providers_sees_failures(harness: Harness, caller: Caller) -> None:
    class Flaky(LocalProvider):
        async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
            if job.prompt.startswith("fail"):
                raise ProviderError("bse_provider_error", "scripted failure", retryable=True)
            return await super().wait(job, prediction_id)

    harness.services.providers["local"] = Flaky()
    records = await _run_generations(caller, ["ok", "fail 1", "fail 2", "fail 3", "fail 4"])
    assert [r["generation_status"] for r in records] == ["succeeded"] + ["failed"] * 4

    d = success(await caller.get("/v1/health/inference/providers"))
    row = _local(d)
    assert row["window"]["total_attempts"] == 5
    assert row["window"]["successes"] == 1
    assert row["window"]["failures"] == 4
    assert row["failure_rate"] == pytest.approx(0.8)
    assert row["status"] == "degraded"

    await _run_generations(caller, ["ok again"])
    row = _local(success(await caller.get("/v1/health/inference/providers")))
    assert row["window"]["total_attempts"] == 6 and row["window"]["successes"] == 2
    assert row["status"] == "recovering"


async def test_health_providers_counts_only_the_callers_own_attempts(
    harness: Harness, caller: Caller
) -> None:
    """Attempt counts are another tenant's activity; only the status is shared."""
    class Flaky(LocalProvider):
        async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
            if job.prompt.startswith("fail"):
                raise ProviderError("bse_provider_error", "scripted failure", retryable=True)
            return await super().wait(job, prediction_id)

    harness.services.providers["local"] = Flaky()
    other = await harness.caller()
    records = await _run_generations(caller, ["ok", "fail 1", "fail 2", "fail 3"])
    assert [r["generation_status"] for r in records] == ["succeeded"] + ["failed"] * 3

    mine = _local(success(await caller.get("/v1/health/inference/providers")))
    window = mine["window"]
    assert (window["total_attempts"], window["failures"], window["successes"]) == (4, 3, 1)
    assert mine["failure_rate"] == pytest.approx(0.75)
    assert mine["status"] == "degraded"

    d = success(await other.get("/v1/health/inference/providers"))
    for row in d["providers"]:
        assert row["window"]["total_attempts"] == row["window"]["failures"] == 0, row
        assert row["window"]["successes"] == 0 and row["failure_rate"] == 0, row
    theirs = _local(d)
    assert theirs["status"] == mine["status"] == "degraded"  # the shared view: status only
    assert theirs["window"]["duration_seconds"] == mine["window"]["duration_seconds"]


class _AlwaysFails(LocalProvider):
    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        raise ProviderError("bse_provider_error", "scripted failure", retryable=True)


async def test_health_providers_unhealthy_when_no_configured_provider_is_healthy(
    harness: Harness, caller: Caller
) -> None:
    harness.services.providers["local"] = _AlwaysFails()
    records = await _run_generations(caller, ["fail 1", "fail 2", "fail 3"])
    assert [r["generation_status"] for r in records] == ["failed"] * 3
    d = success(await caller.get("/v1/health/inference/providers"))
    assert _local(d)["status"] == "degraded"
    usable = [
        p
        for p in d["providers"]
        if (a := harness.services.providers.get(p["provider"])) is not None and a.configured()
    ]
    assert [p["provider"] for p in usable] == ["local"]
    assert d["healthy"] is False


async def test_health_models(harness: Harness, caller: Caller) -> None:
    def configured(pid: str) -> bool:
        adapter = harness.services.providers.get(pid)
        return adapter is not None and adapter.configured()

    assert configured("local")
    d = success(await caller.get("/v1/health/inference/models"))
    assert d["service"] == "models"
    assert d["models_total"] == len(d["models"]) == len(MODELS)
    by_id = {m["model_identifier"]: m for m in d["models"]}
    assert set(by_id) == set(MODELS)
    for ident, entry in MODELS.items():
        m = by_id[ident]
        assert m["model_type"] == entry["model_type"]
        assert m["model_pricing"] == entry["model_pricing"]
        assert m["providers"] == {
            pid: {"available": configured(pid), "raw_model_id": binding["model_id"]}
            for pid, binding in entry["providers"].items()
        }
    for ident in ("local/preview-image", "local/preview-video"):
        assert by_id[ident]["providers"]["local"]["available"] is True
    assert d["healthy"] is all(any(configured(pid) for pid in e["providers"]) for e in MODELS.values())


# -- health: storage and cache ------------------------------------------------------------------


async def test_health_storage_live(harness: Harness, caller: Caller) -> None:
    d = success(await caller.get("/v1/health/storage"))
    assert d["service"] == "storage"
    assert d["healthy"] is True
    assert isinstance(d["latency_ms"], int | float) and d["latency_ms"] >= 0
    assert isinstance(d["bucket"], str) and d["bucket"]
    assert "error" not in d

    files = harness.services.settings.files_dir
    assert files.is_dir()
    moved = files.with_name("files.moved")
    files.rename(moved)
    files.write_text("not a directory")
    try:
        r = await caller.get("/v1/health/storage")
        d = success(r)  # the check itself succeeded: it reports unhealthy storage
        assert d["service"] == "storage"
        assert d["healthy"] is False
        assert isinstance(d["error"], str) and d["error"]
        assert isinstance(d["latency_ms"], int | float)
    finally:
        files.unlink()
        moved.rename(files)

    d = success(await caller.get("/v1/health/storage"))
    assert d["healthy"] is True and "error" not in d
    # The probe cleans up after itself.
    leftovers = [p for p in files.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


async def test_health_storage_failure_is_live_not_cached(harness: Harness, caller: Caller) -> None:
    files = harness.services.settings.files_dir
    assert success(await caller.get("/v1/health/storage"))["healthy"] is True
    shutil.rmtree(files)
    files.write_text("x")
    try:
        assert success(await caller.get("/v1/health/storage"))["healthy"] is False
    finally:
        files.unlink()
        files.mkdir()
    assert success(await caller.get("/v1/health/storage"))["healthy"] is True


async def test_health_cache(caller: Caller) -> None:
    d = success(await caller.get("/v1/health/cache"))
    assert d["service"] == "memory"
    assert d["healthy"] is True
    assert isinstance(d["latency_ms"], int | float) and d["latency_ms"] >= 0
    assert "error" not in d


# -- routes and envelopes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("GET", "/v1/library/nope"),
        ("GET", "/v1/health"),
        ("GET", "/v1/generate/image/local/preview-image"),
        ("POST", "/v1/status"),
        ("DELETE", "/v1/status"),
        ("PUT", "/v1/user/account"),
        ("PATCH", "/v1/user/billing"),
        ("POST", "/v1/library/models"),
        ("DELETE", "/v1/health/storage"),
    ],
)
async def test_unknown_route_or_method(caller: Caller, method: str, path: str) -> None:
    route_not_found(await caller.client.request(method, path, headers=caller.headers))
    route_not_found(await caller.client.request(method, path))


async def test_unknown_route_in_the_nested_shape(caller: Caller) -> None:
    r = await caller.get("/v1/nope", headers={"X-BabySea-SDK-Name": "babysea-typescript"})
    assert r.status_code == 404
    body = r.json()
    assert body["status"] == "error"
    assert body["request_id"] == r.headers["X-Request-Id"]
    err = body["error"]
    assert err["code"] == "BSE2017"
    assert err["type"] == "endpoint_not_found"
    assert err["retryable"] is False
    assert isinstance(err["message"], str) and err["message"]


async def test_every_response_has_a_matching_request_id(harness: Harness) -> None:
    caller = await harness.caller(credits="0.002")
    monitor = await harness.key_for(caller, preset="monitor_only")
    created = await caller.create_image()
    assert created.status_code == 200
    gid = created.json()["data"]["generation_id"]
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded"

    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/status", {}),
        ("GET", "/v1/usage", {}),
        ("GET", "/v1/user/account", {}),
        ("GET", "/v1/user/billing", {}),
        ("GET", "/v1/estimate/local/preview-image", {}),
        ("GET", f"/v1/content/{gid}", {}),
        ("GET", "/v1/content/list", {}),
        ("GET", "/v1/library/providers", {}),
        ("GET", "/v1/library/models", {}),
        ("GET", "/v1/health/inference/providers", {}),
        ("GET", "/v1/health/inference/models", {}),
        ("GET", "/v1/health/storage", {}),
        ("GET", "/v1/health/cache", {}),
        ("POST", "/v1/generate/image/local/preview-image", {"json": {"generation_prompt": "x"}}),  # 402
        ("POST", "/v1/generate/image/local/preview-image", {"json": {"nope": 1}}),  # 400
        ("POST", "/v1/generate/video/local/preview-image", {"json": {"generation_prompt": "x"}}),  # 422
        ("GET", "/v1/content/list", {"params": {"limit": 0}}),  # 400
        ("POST", f"/v1/content/generation/cancel/{gid}", {}),  # 409
        ("GET", "/v1/content/unknown-id", {}),  # 404
        ("GET", "/v1/nope", {}),  # 404 route
        ("DELETE", f"/v1/content/{gid}", {}),
    ]
    seen: set[str] = set()
    statuses: set[int] = set()

    async def check(r: httpx.Response) -> None:
        rid = r.headers.get("X-Request-Id")
        assert rid and rid.startswith("req_"), (r.request.url, r.headers)
        assert r.json()["request_id"] == rid, r.request.url
        assert rid not in seen, "request ids must be unique"
        seen.add(rid)
        statuses.add(r.status_code)
        if r.status_code < 400:
            assert ISO_MS.match(r.json()["timestamp"]), r.json()["timestamp"]

    for method, path, kw in calls:
        await check(await caller.client.request(method, path, headers=caller.headers, **kw))
    await check(await monitor.get("/v1/status"))  # 403
    await check(await harness.client.get("/v1/status"))  # 401
    await check(await harness.client.get("/v1/status", headers={"Authorization": "Bearer bye_us_x"}))  # 401
    assert statuses >= {200, 400, 401, 402, 403, 404, 409, 422}, statuses


async def test_success_timestamps_are_iso_milliseconds_utc(caller: Caller) -> None:
    stamps = []
    for path in ("/v1/status", "/v1/library/models", "/v1/health/cache", "/v1/user/billing"):
        before = datetime.now(UTC)
        r = await caller.get(path)
        after = datetime.now(UTC)
        body = r.json()
        assert ISO_MS.match(body["timestamp"]), body["timestamp"]
        stamp = datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        # Millisecond precision, truncated or rounded: within a millisecond of the request window.
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= stamp, (before, stamp)
        assert (stamp - after).total_seconds() <= 0.001, (stamp, after)
        stamps.append(stamp)
    assert stamps == sorted(stamps)


async def test_health_providers_window_counts_each_accounts_own_attempts(harness: Harness) -> None:
    """Several accounts' attempts do not add up in anyone's view: each sees its own."""
    a, b = await harness.caller(), await harness.caller()
    ids = []
    for c in (a, b, a):
        r = await c.create_image()
        assert r.status_code == 200
        ids.append((c, r.json()["data"]["generation_id"]))
    for c, gid in ids:
        # The "used" attempt is written in the transaction that makes the record succeeded.
        assert (await c.wait(gid))["generation_status"] == "succeeded"
    for c, own in ((a, 2), (b, 1)):
        row = _local(success(await c.get("/v1/health/inference/providers")))
        assert row["window"]["total_attempts"] == row["window"]["successes"] == own, row
        assert row["status"] == "healthy"
