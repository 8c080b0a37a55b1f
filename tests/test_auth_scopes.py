"""Authentication, API keys and scopes over HTTP, checked against the contract (spec/API.md).

Expectations (scopes, presets, error names and codes) are written out here from the
contract rather than imported from the product, so a drift in the product fails a test.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from genplane import clock
from genplane.accounts import service as accounts
from genplane.api.app import create_app
from tests.conftest import Caller, Harness, make_settings

# --- the contract, written out -------------------------------------------------------------

SCOPES = [
    "account:read",
    "generation:write",
    "generation:read",
    "generation:delete",
    "library:read",
    "health:read",
]

PRESETS = {
    "full_access": set(SCOPES),
    "generate_only": {"generation:write", "generation:read", "library:read"},
    "read_only": {"generation:read", "account:read", "health:read", "library:read"},
    "monitor_only": {"health:read", "library:read"},
}

IMAGE_MODEL = "local/preview-image"
VIDEO_MODEL = "local/preview-video"
KEY_RE = re.compile(r"bye_[a-z]{2}_[A-Za-z0-9]{43}")


@dataclass(frozen=True)
class Op:
    """One of the 17 operations with a request that succeeds for a key holding its scope."""

    name: str
    method: str
    path: str  # "{gid}" is replaced with a pending generation of the caller's account
    scope: str
    body: dict[str, Any] | None = None
    message: str | None = None
    data_keys: tuple[str, ...] = field(default=())

    @property
    def needs_generation(self) -> bool:
        return "{gid}" in self.path


OPS = [
    Op(
        "status",
        "GET",
        "/v1/status",
        "account:read",
        message="API connected successfully",
        data_keys=("account_id", "apikey_id", "apikey_prefix"),
    ),
    Op("usage", "GET", "/v1/usage?days=1", "account:read", data_keys=("usage_period_days",)),
    Op("user_account", "GET", "/v1/user/account", "account:read", data_keys=("account_id", "account_name")),
    Op("user_billing", "GET", "/v1/user/billing", "account:read", data_keys=("billing_credit_balance",)),
    Op(
        "estimate",
        "GET",
        f"/v1/estimate/{IMAGE_MODEL}?count=2",
        "library:read",
        data_keys=("cost_per_generation", "cost_total_consumed"),
    ),
    Op(
        "generate_image",
        "POST",
        f"/v1/generate/image/{IMAGE_MODEL}",
        "generation:write",
        body={"generation_prompt": "a red fox"},
        message="Generation initialized",
        data_keys=("generation_id", "generation_initialized"),
    ),
    Op(
        "generate_video",
        "POST",
        f"/v1/generate/video/{VIDEO_MODEL}",
        "generation:write",
        body={"generation_prompt": "a red fox running", "generation_duration": 1},
        message="Generation initialized",
        data_keys=("generation_id", "generation_initialized"),
    ),
    Op("content_get", "GET", "/v1/content/{gid}", "generation:read", data_keys=("generation_id",)),
    Op(
        "content_list",
        "GET",
        "/v1/content/list?limit=10&offset=0",
        "generation:read",
        data_keys=("generations",),
    ),
    Op(
        "content_delete",
        "DELETE",
        "/v1/content/{gid}",
        "generation:delete",
        data_keys=("generation_id", "files_deleted"),
    ),
    Op(
        "content_cancel",
        "POST",
        "/v1/content/generation/cancel/{gid}",
        "generation:delete",
        data_keys=("generation_id", "generation_status"),
    ),
    Op("library_providers", "GET", "/v1/library/providers", "library:read", data_keys=("providers",)),
    Op("library_models", "GET", "/v1/library/models", "library:read", data_keys=("models",)),
    Op("health_providers", "GET", "/v1/health/inference/providers", "health:read", data_keys=("providers",)),
    Op("health_models", "GET", "/v1/health/inference/models", "health:read", data_keys=("models",)),
    Op("health_storage", "GET", "/v1/health/storage", "health:read", data_keys=("service", "healthy")),
    Op("health_cache", "GET", "/v1/health/cache", "health:read", data_keys=("service", "healthy")),
]


def test_operation_table_matches_the_contract() -> None:
    assert len(OPS) == 17
    assert {op.scope for op in OPS} == set(SCOPES)
    assert len({(op.method, op.path) for op in OPS}) == 17


# --- helpers -----------------------------------------------------------------------------


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_generation(owner: Caller) -> str:
    r = await owner.create_image()
    assert r.status_code == 200, r.text
    gid: str = r.json()["data"]["generation_id"]
    return gid


async def call(
    client: httpx.AsyncClient, key: str, op: Op, gid: str | None = None, **kw: Any
) -> httpx.Response:
    path = op.path.replace("{gid}", gid) if gid is not None else op.path
    headers = {**bearer(key), **kw.pop("headers", {})}
    return await client.request(op.method, path, json=op.body, headers=headers, **kw)


async def snapshot(owner: Caller) -> tuple[int, float]:
    """(generations of the account, credit balance), to show a refused call changed nothing."""
    listing = await owner.get("/v1/content/list?limit=1")
    billing = await owner.get("/v1/user/billing")
    assert listing.status_code == 200 and billing.status_code == 200
    return listing.json()["total"], billing.json()["data"]["billing_credit_balance"]


def assert_flat_error(r: httpx.Response, status: int, name: str, code: str, retryable: bool = False) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error"
    assert body["error"] == name, body
    assert body["code"] == code
    assert body["retryable"] is retryable
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == r.headers["X-Request-Id"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    """One app for the many matrix tests; each test works in an account of its own.

    No worker runs: generations stay pending, so cancel and delete always have something
    to act on.
    """
    app = create_app(make_settings(tmp_path_factory.mktemp("shared") / "data", run_worker=False))
    ctx = app.router.lifespan_context(app)
    await ctx.__aenter__()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    try:
        yield Harness(app, app.state.services, client)
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)


in_shared_loop = pytest.mark.asyncio(loop_scope="module")


# --- 17 operations x 6 scopes ------------------------------------------------------------


@in_shared_loop
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
async def test_single_scope_key_against_every_operation(shared: Harness, op: Op, scope: str) -> None:
    h = shared
    owner = await h.caller()
    gid = await new_generation(owner) if op.needs_generation else None
    before = await snapshot(owner)
    key = await h.key_for(owner, scopes=[scope])

    r = await call(h.client, key.key, op, gid)

    if scope == op.scope:
        assert 200 <= r.status_code < 300, r.text
        body = r.json()
        assert body["status"] == "success"
        assert body["request_id"] == r.headers["X-Request-Id"]
        for name in op.data_keys:
            assert name in body["data"], (name, body["data"])
        if op.message:
            assert body["message"] == op.message
        if gid is not None:
            assert body["data"]["generation_id"] == gid
        if op.name == "content_cancel":
            assert body["data"]["generation_status"] == "canceled"
            assert (await owner.get(f"/v1/content/{gid}")).json()["data"]["generation_status"] == "canceled"
        if op.name == "content_delete":
            gone = await owner.get(f"/v1/content/{gid}")
            assert_flat_error(gone, 404, "bse_generation_not_found", "BSE2011")
        if op.name.startswith("generate_"):
            assert body["data"]["generation_initialized"] is True
            assert (await snapshot(owner))[0] == before[0] + 1
        return

    assert_flat_error(r, 403, "bse_insufficient_permissions", "BSE1003")
    # A refused call has no effect: nothing created, charged, canceled or deleted.
    assert await snapshot(owner) == before
    if gid is not None:
        record = await owner.get(f"/v1/content/{gid}")
        assert record.status_code == 200
        assert record.json()["data"]["generation_status"] == "pending"


# --- presets -----------------------------------------------------------------------------


@in_shared_loop
@pytest.mark.parametrize("preset", list(PRESETS))
async def test_preset_grants_exactly_the_contract_scopes(shared: Harness, preset: str) -> None:
    h = shared
    owner = await h.caller()
    key = await h.key_for(owner, preset=preset)
    expected = PRESETS[preset]

    stored = [k for k in await accounts.list_keys(h.services.db, owner.account_id) if k.id == key.key_id]
    assert len(stored) == 1
    assert set(stored[0].scopes) == expected
    assert len(stored[0].scopes) == len(expected)

    status = await key.get("/v1/status")
    if "account:read" in expected:
        assert status.status_code == 200
        assert sorted(status.json()["data"]["apikey_scopes"]) == sorted(expected)
    else:
        assert_flat_error(status, 403, "bse_insufficient_permissions", "BSE1003")

    # And the key behaves accordingly on every operation.
    for op in OPS:
        gid = await new_generation(owner) if op.needs_generation else None
        r = await call(h.client, key.key, op, gid)
        if op.scope in expected:
            assert 200 <= r.status_code < 300, (op.name, r.text)
        else:
            assert r.status_code == 403, (op.name, r.text)
            assert r.json()["error"] == "bse_insufficient_permissions"


async def test_explicit_scope_list_is_exactly_what_the_key_holds(harness: Harness) -> None:
    owner = await harness.caller()
    key = await harness.key_for(owner, scopes=["health:read", "account:read"])
    r = await key.get("/v1/status")
    assert r.status_code == 200
    assert sorted(r.json()["data"]["apikey_scopes"]) == ["account:read", "health:read"]
    assert (await key.get("/v1/health/cache")).status_code == 200
    assert (await key.get("/v1/library/models")).status_code == 403


# --- missing, malformed and unknown keys ---------------------------------------------------


@pytest.mark.parametrize(
    "make_headers",
    [
        lambda key: {},
        lambda key: {"Authorization": ""},
        lambda key: {"Authorization": "Bearer"},
        lambda key: {"Authorization": "Bearer "},
        lambda key: {"Authorization": "Bearer    "},
        lambda key: {"Authorization": f"Basic {key}"},
        lambda key: {"Authorization": f"Token {key}"},
        lambda key: {"Authorization": key},
    ],
    ids=["missing", "empty", "scheme-only", "empty-token", "blank-token", "basic", "token", "no-scheme"],
)
async def test_missing_or_malformed_authorization_is_authentication_required(
    harness: Harness, make_headers: Callable[[str], dict[str, str]]
) -> None:
    owner = await harness.caller()  # a valid key, to show a wrong scheme is refused even so
    for path in ("/v1/status", "/v1/library/models", f"/v1/content/{'0' * 36}"):
        r = await harness.client.get(path, headers=make_headers(owner.key))
        assert_flat_error(r, 401, "bse_authentication_required", "BSE1001")


async def test_bearer_scheme_is_case_insensitive(harness: Harness) -> None:
    owner = await harness.caller()
    r = await harness.client.get("/v1/status", headers={"Authorization": f"bearer {owner.key}"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        "bye_us_" + "A" * 43,  # well-formed, never issued
        "not-a-key",
        "bye_us_short",
        "bye_xx_" + "A" * 43,  # not a region at all
    ],
    ids=["unknown-us-key", "garbage", "truncated", "bogus-region"],
)
async def test_unknown_key_is_invalid_api_key(harness: Harness, token: str) -> None:
    await harness.caller()
    r = await harness.client.get("/v1/status", headers=bearer(token))
    assert_flat_error(r, 401, "bse_invalid_api_key", "BSE1002")
    assert token not in r.text


async def test_a_key_with_one_character_changed_is_invalid(harness: Harness) -> None:
    owner = await harness.caller()
    last = owner.key[-1]
    tampered = owner.key[:-1] + ("a" if last != "a" else "b")
    assert_flat_error(
        await harness.client.get("/v1/status", headers=bearer(tampered)),
        401,
        "bse_invalid_api_key",
        "BSE1002",
    )


# --- regions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["eu", "jp"])
async def test_key_of_another_region_names_that_regions_host(harness: Harness, other: str) -> None:
    owner = await harness.caller()
    assert owner.key.startswith("bye_us_")
    foreign = owner.key.replace("bye_us_", f"bye_{other}_", 1)
    r = await harness.client.get("/v1/status", headers=bearer(foreign))
    assert_flat_error(r, 401, "bse_region_mismatch", "BSE1002")
    assert f"api.{other}.genplane.local" in r.json()["message"]
    assert foreign not in r.text


async def test_region_mismatch_uses_the_configured_domain_and_region(
    harness_factory: Callable[..., Any],
) -> None:
    h = await harness_factory(region="eu", public_domain="example.com")
    owner = await h.caller()
    assert owner.key.startswith("bye_eu_")
    assert (await owner.get("/v1/status")).json()["data"]["region"] == "eu"
    foreign = owner.key.replace("bye_eu_", "bye_us_", 1)
    r = await h.client.get("/v1/status", headers=bearer(foreign))
    assert_flat_error(r, 401, "bse_region_mismatch", "BSE1002")
    assert "api.us.example.com" in r.json()["message"]

    nested = await h.client.get("/v1/status", headers={**bearer(foreign), "X-BabySea-SDK-Name": "babysea"})
    assert nested.json()["error"]["code"] == "BSE1002"
    assert nested.json()["error"]["type"] == "authentication_failed"
    assert "api.us.example.com" in nested.json()["error"]["message"]


# --- expiry, revocation, rotation, deleted accounts --------------------------------------------


async def test_expired_key_is_invalid(harness: Harness) -> None:
    owner = await harness.caller()
    expired = await harness.key_for(
        owner, preset="full_access", expires_at=clock.utcnow() - timedelta(seconds=1)
    )
    assert_flat_error(await expired.get("/v1/status"), 401, "bse_invalid_api_key", "BSE1002")
    assert (await owner.get("/v1/status")).status_code == 200


async def test_key_stops_working_when_it_expires(harness: Harness) -> None:
    owner = await harness.caller()
    expires_at = clock.utcnow() + timedelta(seconds=1.5)
    short = await harness.key_for(owner, preset="full_access", expires_at=expires_at)
    r = await short.get("/v1/status")
    assert r.status_code == 200
    shown = datetime.strptime(r.json()["data"]["apikey_expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC
    )
    assert abs((shown - expires_at).total_seconds()) < 0.01
    deadline = time.monotonic() + 10
    while True:
        sent_at = clock.utcnow()
        r = await short.get("/v1/status")
        if r.status_code != 200:
            break
        assert sent_at < expires_at, "a request sent after the expiry was let in"
        assert time.monotonic() < deadline, "the key outlived its expiry"
        await asyncio.sleep(0.05)
    assert_flat_error(r, 401, "bse_invalid_api_key", "BSE1002")
    assert clock.utcnow() >= expires_at


async def test_revoked_key_is_invalid_and_other_keys_keep_working(harness: Harness) -> None:
    owner = await harness.caller()
    other = await harness.key_for(owner, preset="read_only")
    assert (await owner.get("/v1/status")).status_code == 200
    assert await accounts.revoke_key(harness.services.db, owner.key_id)
    assert_flat_error(await owner.get("/v1/status"), 401, "bse_invalid_api_key", "BSE1002")
    assert_flat_error(await owner.get("/v1/library/models"), 401, "bse_invalid_api_key", "BSE1002")
    assert (await other.get("/v1/status")).status_code == 200
    assert not await accounts.revoke_key(harness.services.db, owner.key_id)  # already revoked


def shift_clock(monkeypatch: pytest.MonkeyPatch, delta: timedelta) -> None:
    """Move the product's 'now' forward by ``delta`` everywhere it is read."""
    original = clock.utcnow

    def later() -> datetime:
        return original() + delta

    for name, module in list(sys.modules.items()):
        if name.startswith("genplane") and getattr(module, "utcnow", None) is original:
            monkeypatch.setattr(module, "utcnow", later)


async def test_rotated_key_old_works_during_grace_new_works_after(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = harness.services
    owner = await harness.caller(preset="read_only")
    assert (await owner.get("/v1/status")).status_code == 200

    issued = await accounts.rotate_key(svc.db, svc.settings, owner.key_id, grace_hours=24)
    new = Caller(harness.client, owner.account_id, issued.key, issued.record.id)
    assert new.key != owner.key

    old_status = await owner.get("/v1/status")
    new_status = await new.get("/v1/status")
    assert old_status.status_code == 200 and new_status.status_code == 200
    old_data, new_data = old_status.json()["data"], new_status.json()["data"]
    assert new_data["apikey_id"] == issued.record.id != old_data["apikey_id"]
    assert new_data["apikey_name"] == old_data["apikey_name"]
    assert sorted(new_data["apikey_scopes"]) == sorted(PRESETS["read_only"])
    assert new_data["apikey_expires_at"] is None
    grace_end = datetime.strptime(old_data["apikey_expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((grace_end - (clock.utcnow() + timedelta(hours=24))).total_seconds()) < 60

    shift_clock(monkeypatch, timedelta(hours=23, minutes=50))
    assert (await owner.get("/v1/status")).status_code == 200  # still inside the grace period
    monkeypatch.undo()

    shift_clock(monkeypatch, timedelta(hours=24, minutes=10))
    assert_flat_error(await owner.get("/v1/status"), 401, "bse_invalid_api_key", "BSE1002")
    assert (await new.get("/v1/status")).status_code == 200


async def test_rotation_grace_in_hours_is_respected(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = harness.services
    owner = await harness.caller()
    issued = await accounts.rotate_key(svc.db, svc.settings, owner.key_id, grace_hours=1)
    new = Caller(harness.client, owner.account_id, issued.key, issued.record.id)
    shift_clock(monkeypatch, timedelta(minutes=55))
    assert (await owner.get("/v1/status")).status_code == 200
    monkeypatch.undo()
    shift_clock(monkeypatch, timedelta(minutes=65))
    assert_flat_error(await owner.get("/v1/status"), 401, "bse_invalid_api_key", "BSE1002")
    assert (await new.get("/v1/status")).status_code == 200


async def test_rotation_after_grace_by_database_expiry(harness_factory: Callable[..., Any]) -> None:
    """The grace end is what the database says: moving it into the past ends the old key."""
    from sqlalchemy import update

    from genplane.db.models import ApiKey

    h = await harness_factory(auth_cache_seconds=0)  # our change bypasses the service's cache
    svc = h.services
    owner = await h.caller()
    issued = await accounts.rotate_key(svc.db, svc.settings, owner.key_id)  # default grace
    new = Caller(h.client, owner.account_id, issued.key, issued.record.id)
    stored = {k.id: k for k in await accounts.list_keys(svc.db, owner.account_id)}
    default_end = clock.as_utc(stored[owner.key_id].expires_at)  # type: ignore[arg-type]
    assert abs((default_end - (clock.utcnow() + timedelta(hours=24))).total_seconds()) < 60
    assert (await owner.get("/v1/status")).status_code == 200

    async with svc.db.write() as s:
        await s.execute(
            update(ApiKey)
            .where(ApiKey.id == owner.key_id)
            .values(expires_at=clock.utcnow() - timedelta(seconds=1))
        )
    assert_flat_error(await owner.get("/v1/status"), 401, "bse_invalid_api_key", "BSE1002")
    assert (await new.get("/v1/status")).status_code == 200


@pytest.mark.parametrize("grace", [0, 169, -1])
async def test_rotation_grace_out_of_range_is_refused(harness: Harness, grace: int) -> None:
    svc = harness.services
    owner = await harness.caller()
    with pytest.raises(ValueError, match="grace"):
        await accounts.rotate_key(svc.db, svc.settings, owner.key_id, grace_hours=grace)
    keys = await accounts.list_keys(svc.db, owner.account_id)
    assert [k.id for k in keys] == [owner.key_id]
    assert keys[0].expires_at is None


async def test_a_key_with_a_live_successor_is_not_rotated_again(harness: Harness) -> None:
    """Two live successors of one key: revoking "the new key" would leave another working."""
    svc = harness.services
    owner = await harness.caller()
    first = await accounts.rotate_key(svc.db, svc.settings, owner.key_id, grace_hours=24)
    expiry = {k.id: k.expires_at for k in await accounts.list_keys(svc.db, owner.account_id)}
    with pytest.raises(ValueError, match=f"successor {first.record.id}"):
        await accounts.rotate_key(svc.db, svc.settings, owner.key_id, grace_hours=1)
    keys = await accounts.list_keys(svc.db, owner.account_id)
    assert {k.id for k in keys} == {owner.key_id, first.record.id}
    assert {k.id: k.expires_at for k in keys} == expiry  # the grace period was not touched
    # The successor can itself be rotated, once.
    second = await accounts.rotate_key(svc.db, svc.settings, first.record.id)
    with pytest.raises(ValueError, match=f"successor {second.record.id}"):
        await accounts.rotate_key(svc.db, svc.settings, first.record.id)


async def test_a_successor_that_expired_does_not_block_a_rotation(harness: Harness) -> None:
    from sqlalchemy import update

    from genplane.db.models import ApiKey

    svc = harness.services
    owner = await harness.caller()
    in_two_days = clock.utcnow() + timedelta(days=2)
    expiring = await harness.key_for(owner, preset="full_access", expires_at=in_two_days)
    first = await accounts.rotate_key(svc.db, svc.settings, expiring.key_id)
    assert first.record.expires_at is not None  # inherited: still live for two days
    with pytest.raises(ValueError, match=f"successor {first.record.id}"):
        await accounts.rotate_key(svc.db, svc.settings, expiring.key_id)
    async with svc.db.write() as s:
        await s.execute(
            update(ApiKey)
            .where(ApiKey.id == first.record.id)
            .values(expires_at=clock.utcnow() - timedelta(seconds=1))
        )
    again = await accounts.rotate_key(svc.db, svc.settings, expiring.key_id)
    assert again.record.id not in (first.record.id, expiring.key_id)


async def test_two_rotations_at_once_leave_one_successor(harness: Harness) -> None:
    svc = harness.services
    owner = await harness.caller()
    results = await asyncio.gather(
        *(accounts.rotate_key(svc.db, svc.settings, owner.key_id) for _ in range(3)), return_exceptions=True
    )
    issued = [r for r in results if not isinstance(r, BaseException)]
    assert len(issued) == 1, results
    assert all(isinstance(r, ValueError) for r in results if r not in issued)
    successors = [k for k in await accounts.list_keys(svc.db) if k.rotated_from_id == owner.key_id]
    assert [k.id for k in successors] == [issued[0].record.id]


async def test_rotating_a_revoked_key_is_refused(harness: Harness) -> None:
    svc = harness.services
    owner = await harness.caller()
    await accounts.revoke_key(svc.db, owner.key_id)
    with pytest.raises(ValueError):
        await accounts.rotate_key(svc.db, svc.settings, owner.key_id)


async def test_rotating_an_expired_key_is_refused(harness: Harness) -> None:
    """A successor would inherit the past expiry and be dead on arrival."""
    svc = harness.services
    owner = await harness.caller()
    expired = await harness.key_for(
        owner, preset="full_access", expires_at=clock.utcnow() - timedelta(hours=1)
    )
    with pytest.raises(ValueError, match="no active key"):
        await accounts.rotate_key(svc.db, svc.settings, expired.key_id)
    assert len(await accounts.list_keys(svc.db, owner.account_id)) == 2


async def test_no_new_key_for_a_deleted_account(harness: Harness) -> None:
    svc = harness.services
    owner = await harness.caller()
    assert await accounts.delete_account(svc.db, owner.account_id)
    with pytest.raises(ValueError, match="no account"):
        await harness.key_for(owner, preset="full_access")
    with pytest.raises(ValueError, match=r"no active key|no account"):
        await accounts.rotate_key(svc.db, svc.settings, owner.key_id)
    assert [k.id for k in await accounts.list_keys(svc.db, owner.account_id)] == [owner.key_id]


async def test_deleted_account_is_account_not_found(harness: Harness) -> None:
    owner = await harness.caller()
    second = await harness.key_for(owner, preset="monitor_only")
    bystander = await harness.caller()
    assert (await owner.get("/v1/status")).status_code == 200
    assert await accounts.delete_account(harness.services.db, owner.account_id)
    for c, path in ((owner, "/v1/status"), (owner, "/v1/library/models"), (second, "/v1/health/cache")):
        assert_flat_error(await c.get(path), 404, "bse_account_not_found", "BSE1008")
    assert (await bystander.get("/v1/status")).status_code == 200


# --- IP allowlist ------------------------------------------------------------------------------


def client_from(h: Harness, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=h.app, client=(ip, 50001))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_ip_allowlist_admits_a_cidr_member_and_refuses_others(
    harness_factory: Callable[..., Any],
) -> None:
    h = await harness_factory(client_host="203.0.113.7")
    owner = await h.caller()
    fenced = await h.key_for(owner, preset="full_access", allowed_ips=["203.0.113.0/24"])
    r = await fenced.get("/v1/status")
    assert r.status_code == 200, r.text

    async with client_from(h, "127.0.0.1") as local, client_from(h, "203.0.114.7") as near:
        for client in (local, near):
            r = await client.get("/v1/status", headers=fenced.headers)
            assert_flat_error(r, 403, "bse_ip_not_allowed", "BSE1007")
            assert r.headers["X-Request-Id"] == r.json()["request_id"]
        # A key without an allowlist is not affected.
        assert (await local.get("/v1/status", headers=owner.headers)).status_code == 200


async def test_ip_allowlist_single_addresses_and_ipv6(harness_factory: Callable[..., Any]) -> None:
    h = await harness_factory(client_host="203.0.113.7")
    owner = await h.caller()
    exact = await h.key_for(owner, preset="full_access", allowed_ips=["203.0.113.7"])
    wrong = await h.key_for(owner, preset="full_access", allowed_ips=["203.0.113.8"])
    v6 = await h.key_for(owner, preset="full_access", allowed_ips=["2001:db8::/32", "198.51.100.1"])
    assert (await exact.get("/v1/status")).status_code == 200
    assert_flat_error(await wrong.get("/v1/status"), 403, "bse_ip_not_allowed", "BSE1007")
    assert_flat_error(await v6.get("/v1/status"), 403, "bse_ip_not_allowed", "BSE1007")
    async with client_from(h, "2001:db8::1") as six, client_from(h, "198.51.100.1") as four:
        assert (await six.get("/v1/status", headers=v6.headers)).status_code == 200
        assert (await four.get("/v1/status", headers=v6.headers)).status_code == 200
        assert_flat_error(
            await six.get("/v1/status", headers=exact.headers), 403, "bse_ip_not_allowed", "BSE1007"
        )


async def test_invalid_allowlist_entries_are_refused(harness: Harness) -> None:
    owner = await harness.caller()
    for bad in (["300.1.2.3"], ["203.0.113.0/33"], ["example.com"], ["10.0.0.1"] * 51):
        with pytest.raises(ValueError):
            await harness.key_for(owner, preset="full_access", allowed_ips=bad)
    assert len(await accounts.list_keys(harness.services.db, owner.account_id)) == 1


# --- error envelope ----------------------------------------------------------------------------


async def error_samples(
    h: Harness, extra_headers: dict[str, str]
) -> list[tuple[httpx.Response, str, str, str]]:
    """(response, flat name, code, nested type) for a spread of auth and scope failures."""
    owner = await h.caller()
    monitor = await h.key_for(owner, preset="monitor_only")
    foreign = owner.key.replace("bye_us_", "bye_eu_", 1)
    c = h.client
    return [
        (
            await c.get("/v1/status", headers=extra_headers),
            "bse_authentication_required",
            "BSE1001",
            "authentication_required",
        ),
        (
            await c.get("/v1/status", headers={**bearer("bye_us_" + "Z" * 43), **extra_headers}),
            "bse_invalid_api_key",
            "BSE1002",
            "authentication_failed",
        ),
        (
            await c.get("/v1/status", headers={**bearer(foreign), **extra_headers}),
            "bse_region_mismatch",
            "BSE1002",
            "authentication_failed",
        ),
        (
            await c.get("/v1/status", headers={**monitor.headers, **extra_headers}),
            "bse_insufficient_permissions",
            "BSE1003",
            "insufficient_permissions",
        ),
    ]


async def test_error_envelope_is_flat_by_default(harness: Harness) -> None:
    seen_ids = set()
    for r, name, code, _type in await error_samples(harness, {}):
        body = r.json()
        assert set(body) <= {"status", "request_id", "error", "message", "retryable", "code", "details"}
        assert {"status", "request_id", "error", "message", "retryable", "code"} <= set(body)
        assert body["status"] == "error"
        assert body["error"] == name and body["code"] == code
        assert body["retryable"] is False
        assert re.fullmatch(r"req_[0-9a-zA-Z]+", body["request_id"])
        assert body["request_id"] == r.headers["X-Request-Id"]
        assert r.headers["content-type"].startswith("application/json")
        assert "Traceback" not in r.text and 'File "' not in r.text
        seen_ids.add(body["request_id"])
    assert len(seen_ids) == 4  # one id per request


async def test_error_envelope_is_nested_for_the_sdk(harness: Harness) -> None:
    for r, _name, code, type_ in await error_samples(harness, {"X-BabySea-SDK-Name": "babysea-ts"}):
        body = r.json()
        assert set(body) == {"status", "request_id", "error"}
        assert body["status"] == "error"
        assert body["request_id"] == r.headers["X-Request-Id"]
        err = body["error"]
        assert isinstance(err, dict)
        assert err["code"] == code and err["type"] == type_
        assert err["retryable"] is False
        assert isinstance(err["message"], str) and err["message"]
        assert "Traceback" not in r.text


async def test_error_shape_setting_nested_and_flat(harness_factory: Callable[..., Any]) -> None:
    nested = await harness_factory(error_shape="nested")
    for r, _name, code, type_ in await error_samples(nested, {}):
        err = r.json()["error"]
        assert isinstance(err, dict), r.text
        assert (err["code"], err["type"]) == (code, type_)
        assert "code" not in r.json()

    flat = await harness_factory(error_shape="flat")
    for r, name, code, _type in await error_samples(flat, {"X-BabySea-SDK-Name": "babysea-ts"}):
        assert r.json()["error"] == name and r.json()["code"] == code


async def test_success_envelope_carries_the_request_id(caller: Caller) -> None:
    r = await caller.get("/v1/status")
    body = r.json()
    assert body["status"] == "success"
    assert body["message"] == "API connected successfully"
    assert body["request_id"] == r.headers["X-Request-Id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])


# --- the key is never shown back -----------------------------------------------------------------


@in_shared_loop
async def test_responses_never_contain_the_full_key(shared: Harness) -> None:
    h = shared
    owner = await h.caller()
    monitor = await h.key_for(owner, preset="monitor_only")
    responses = []
    for op in OPS:
        gid = await new_generation(owner) if op.needs_generation else None
        r = await call(h.client, owner.key, op, gid)
        assert 200 <= r.status_code < 300, (op.name, r.text)
        responses.append(r)
        responses.append(await call(h.client, monitor.key, op, gid))  # mostly 403s
    foreign = owner.key.replace("bye_us_", "bye_eu_", 1)
    responses.append(await h.client.get("/v1/status", headers=bearer(foreign)))
    for r in responses:
        shown = r.text + repr(dict(r.headers))
        for key in (owner.key, monitor.key, foreign):
            assert key[9:] not in shown, r.text
        assert not KEY_RE.search(shown), r.text

    status = (await owner.get("/v1/status")).json()["data"]
    assert status["apikey_prefix"] == owner.key[:9]
    assert len(status["apikey_prefix"]) == 9
    assert status["apikey_prefix"].startswith("bye_us_")


async def test_stored_record_holds_only_prefix_and_hash(harness: Harness) -> None:
    owner = await harness.caller()
    (record,) = await accounts.list_keys(harness.services.db, owner.account_id)
    values = [str(getattr(record, c.key)) for c in record.__table__.columns]
    assert record.prefix == owner.key[:9]
    assert all(owner.key[9:] not in v for v in values)


# --- rate limits -------------------------------------------------------------------------------------


async def test_rate_limit_headers_on_authenticated_responses(harness_factory: Callable[..., Any]) -> None:
    h = await harness_factory(rate_limit_per_minute=10)
    owner = await h.caller()
    monitor = await h.key_for(owner, preset="monitor_only")
    responses = [
        await owner.get("/v1/status"),
        await owner.get("/v1/user/account"),
        await monitor.get("/v1/status"),  # 403, still authenticated
        await owner.get(f"/v1/content/{'0' * 36}"),  # 404, still authenticated
    ]
    assert [r.status_code for r in responses] == [200, 200, 403, 404]
    now = time.time()
    remaining = []
    for r in responses:
        assert r.headers["X-RateLimit-Limit"] == "10"
        remaining.append(int(r.headers["X-RateLimit-Remaining"]))
        reset = int(r.headers["X-RateLimit-Reset"])
        assert now - 1 <= reset <= now + 61
    assert remaining == [9, 8, 7, 6]  # both keys count against the one account (all in `read`)


async def test_rate_limit_exceeded_on_the_fourth_request(harness_factory: Callable[..., Any]) -> None:
    h = await harness_factory(rate_limit_per_minute=3)
    owner = await h.caller()
    same_account = await h.key_for(owner, preset="full_access")
    other_account = await h.caller()
    for _ in range(3):
        assert (await owner.get("/v1/status")).status_code == 200
    for c in (owner, same_account):
        r = await c.get("/v1/status")
        assert_flat_error(r, 429, "bse_rate_limit_exceeded", "BSE1005", retryable=True)
        retry_after = int(r.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert r.headers["X-RateLimit-Limit"] == "3"
        assert r.headers["X-RateLimit-Remaining"] == "0"
    assert (await other_account.get("/v1/status")).status_code == 200

    nested = await owner.get("/v1/status", headers={"X-BabySea-SDK-Name": "babysea-ts"})
    assert nested.status_code == 429
    assert nested.json()["error"]["type"] == "rate_limit_exceeded"
    assert nested.json()["error"]["retryable"] is True
    assert "Retry-After" in nested.headers


async def test_failed_authentications_from_one_ip_are_rate_limited(
    harness_factory: Callable[..., Any],
) -> None:
    h = await harness_factory(auth_failures_per_minute=3)
    bad = bearer("bye_us_" + "Q" * 43)
    for _ in range(3):
        assert_flat_error(
            await h.client.get("/v1/status", headers=bad), 401, "bse_invalid_api_key", "BSE1002"
        )
    r = await h.client.get("/v1/status", headers=bad)
    assert_flat_error(r, 429, "bse_auth_rate_limited", "BSE1006", retryable=True)
    assert 1 <= int(r.headers["Retry-After"]) <= 60

    # Another address is not affected, and a good key from it works.
    owner = await h.caller()
    async with client_from(h, "198.51.100.20") as elsewhere:
        assert_flat_error(
            await elsewhere.get("/v1/status", headers=bad), 401, "bse_invalid_api_key", "BSE1002"
        )
        assert (await elsewhere.get("/v1/status", headers=owner.headers)).status_code == 200


async def test_auth_failure_limit_counts_every_kind_of_failed_authentication(
    harness_factory: Callable[..., Any],
) -> None:
    h = await harness_factory(auth_failures_per_ip_per_minute=3)
    owner = await h.caller()
    attempts = [
        {},  # no header
        {"Authorization": "Basic abc"},
        bearer(owner.key.replace("bye_us_", "bye_jp_", 1)),
    ]
    assert [(await h.client.get("/v1/status", headers=a)).status_code for a in attempts] == [401, 401, 401]
    r = await h.client.get("/v1/library/models", headers=bearer("bye_us_" + "Q" * 43))
    assert_flat_error(r, 429, "bse_auth_rate_limited", "BSE1006", retryable=True)


async def test_successful_and_refused_but_authenticated_calls_are_not_auth_failures(
    harness_factory: Callable[..., Any],
) -> None:
    h = await harness_factory(auth_failures_per_minute=2)
    owner = await h.caller()
    monitor = await h.key_for(owner, preset="monitor_only")
    for _ in range(5):
        assert (await owner.get("/v1/status")).status_code == 200
        assert (await monitor.get("/v1/status")).status_code == 403
    assert (await owner.get("/v1/status")).status_code == 200
