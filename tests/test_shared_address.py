"""Who the client is, and what one client may cost the others at the same address.

Repeated single-valued headers are refused before anything reads them; X-Forwarded-For
counts only from a configured proxy; failed authentications and firewall blocks of an
address never lock out a key that works (one abuser behind a NAT must not lock out every
tenant behind it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from genplane.api.blocklist import key_subject
from genplane.db.models import Generation
from genplane.settings import Settings
from tests.conftest import Harness

BAD_KEY = "bye_us_" + "Q" * 43


def client_from(h: Harness, ip: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app, client=(ip, 50002)), base_url="http://t")


def assert_error(r: httpx.Response, status: int, name: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"] == name, body
    return body


# -- 1. repeated headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("firewall", [True, False])
async def test_second_authorization_header_cannot_smuggle_a_blocked_key(
    harness_factory: Callable[..., Any], firewall: bool
) -> None:
    h: Harness = await harness_factory(firewall_enabled=firewall, anomaly_auto_block="all")
    caller = await h.caller()
    assert (await caller.get("/v1/status")).status_code == 200
    await h.services.blocklist.block(key_subject(caller.key), 300)
    assert_error(await caller.get("/v1/status"), 403, "bse_request_blocked")

    for order in ([caller.key, "junk"], ["junk", caller.key]):
        headers = [("Authorization", f"Bearer {k}") for k in order]
        r = await h.client.post(
            "/v1/generate/image/local/preview-image", json={"generation_prompt": "x"}, headers=headers
        )
        body = assert_error(r, 400, "bse_invalid_input")
        assert body["details"]["header"] == "Authorization"
    async with h.services.db.read() as s:
        made = await s.scalar(select(func.count()).where(Generation.account_id == caller.account_id))
    assert made == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("Idempotency-Key", "k1"), ("Content-Type", "application/json"), ("Content-Length", "2")],
)
async def test_each_single_valued_header_is_refused_when_repeated(
    harness: Harness, name: str, value: str
) -> None:
    caller = await harness.caller()
    headers = [("Authorization", f"Bearer {caller.key}"), (name, value), (name, value)]
    r = await harness.client.post("/v1/generate/image/local/preview-image", content=b"{}", headers=headers)
    body = assert_error(r, 400, "bse_invalid_input")
    assert body["details"]["header"] == name
    assert (await caller.get("/v1/content/list")).json()["total"] == 0  # nothing was created


async def test_repeated_headers_count_as_rejections_of_the_address(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(firewall_max_rejections=2)
    twice = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    for _ in range(3):
        assert_error(await h.client.get("/v1/status", headers=twice), 400, "bse_invalid_input")
    assert_error(await h.client.get("/v1/status"), 403, "bse_request_blocked")


# -- 2. trusted proxies ------------------------------------------------------------------------------


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(client_host="127.0.0.1")
    owner = await h.caller()
    fenced = await h.key_for(owner, preset="full_access", allowed_ips=["10.9.8.7"])
    r = await fenced.get("/v1/status", headers={"X-Forwarded-For": "10.9.8.7"})
    assert_error(r, 403, "bse_ip_not_allowed")


async def test_a_trusted_proxy_names_the_client_for_allowlists_limits_and_blocks(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(
        client_host="192.0.2.1", trusted_proxies="192.0.2.0/24", auth_failures_per_minute=2
    )
    owner = await h.caller()
    fenced = await h.key_for(owner, preset="full_access", allowed_ips=["10.9.8.7"])
    assert (await fenced.get("/v1/status", headers={"X-Forwarded-For": "10.9.8.7"})).status_code == 200
    r = await fenced.get("/v1/status", headers={"X-Forwarded-For": "10.9.8.8"})
    assert_error(r, 403, "bse_ip_not_allowed")
    # The client forwarded for, not the proxy, is what the failure limit counts.
    bad = {"Authorization": f"Bearer {BAD_KEY}"}
    for _ in range(2):
        r = await h.client.get("/v1/status", headers={**bad, "X-Forwarded-For": "203.0.113.5"})
        assert_error(r, 401, "bse_invalid_api_key")
    r = await h.client.get("/v1/status", headers={**bad, "X-Forwarded-For": "203.0.113.5"})
    assert_error(r, 429, "bse_auth_rate_limited")
    r = await h.client.get("/v1/status", headers={**bad, "X-Forwarded-For": "203.0.113.6"})
    assert_error(r, 401, "bse_invalid_api_key")


def test_trusted_proxies_setting_takes_lists_and_refuses_what_is_not_an_address() -> None:
    assert Settings(trusted_proxies="10.0.0.1, 10.1.0.0/16").trusted_proxies == ["10.0.0.1", "10.1.0.0/16"]
    assert Settings(trusted_proxies='["::1"]').trusted_proxies == ["::1"]
    assert Settings().trusted_proxies == []
    with pytest.raises(ValueError, match="not an IP address"):
        Settings(trusted_proxies="proxy.internal")


# -- 5. lockouts of a shared address -------------------------------------------------------------------


async def test_keyless_failures_at_an_address_do_not_lock_out_its_keys(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(auth_failures_per_minute=30)
    caller = await h.caller()
    for _ in range(30):
        assert_error(await h.client.get("/v1/status"), 401, "bse_authentication_required")
    assert_error(await h.client.get("/v1/status"), 429, "bse_auth_rate_limited")
    assert (await caller.get("/v1/status")).status_code == 200
    # Another bad key has a window of its own.
    r = await h.client.get("/v1/status", headers={"Authorization": f"Bearer {BAD_KEY}"})
    assert_error(r, 401, "bse_invalid_api_key")


async def test_address_ceiling_refuses_failing_keys_but_serves_working_ones(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(auth_failures_per_minute=100, auth_failures_per_ip_per_minute=5)
    owner = await h.caller()
    for i in range(5):
        r = await h.client.get("/v1/status", headers={"Authorization": f"Bearer bye_us_{i:0>43}"})
        assert_error(r, 401, "bse_invalid_api_key")
    body = assert_error(
        await h.client.get("/v1/status", headers={"Authorization": f"Bearer {BAD_KEY}"}),
        429,
        "bse_auth_rate_limited",
    )
    assert body["details"]["limit"] == 5
    # A key that works is never refused for its address's failures, even one not seen before.
    fresh = await h.key_for(owner, preset="full_access")
    assert (await fresh.get("/v1/status")).status_code == 200
    assert (await owner.get("/v1/status")).status_code == 200
    async with client_from(h, "198.51.100.9") as elsewhere:
        r = await elsewhere.get("/v1/status", headers={"Authorization": f"Bearer {BAD_KEY}"})
        assert_error(r, 401, "bse_invalid_api_key")


async def test_firewall_address_block_spares_working_keys_never_seen_by_this_process(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(firewall_max_rejections=3)
    owner = await h.caller()  # has never called: this process has not seen its key work
    for i in range(4):
        assert_error(await h.client.get(f"/nope/{i}"), 404, "bse_route_not_found")
    assert_error(await h.client.get("/v1/status"), 403, "bse_request_blocked")
    bad = {"Authorization": f"Bearer {BAD_KEY}"}
    assert_error(await h.client.get("/v1/status", headers=bad), 403, "bse_request_blocked")
    assert (await owner.get("/v1/status")).status_code == 200
    r = await owner.create_image()
    assert r.status_code == 200, r.text
    # The key's own abuse is still its own: its rejections block it, not the address.
    for i in range(4):
        assert_error(await owner.get(f"/nope/{i}"), 404, "bse_route_not_found")
    assert_error(await owner.get("/v1/status"), 403, "bse_request_blocked")
