"""Hostile input against the whole API: other accounts' data, SSRF through input files.

Scopes, keys, rate limits and malformed requests have their own files
(test_auth_scopes, test_firewall); this file gathers what an attacker with a valid key
of their own would try.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Caller, Harness

KONTEXT = "bfl/flux-kontext-pro"  # a model that takes input images


async def finished_generation(caller: Caller) -> str:
    r = await caller.create_image()
    assert r.status_code == 200, r.text
    gid = str(r.json()["data"]["generation_id"])
    assert (await caller.wait(gid))["generation_status"] == "succeeded"
    return gid


async def test_no_operation_exposes_another_accounts_generation(harness: Harness) -> None:
    victim, attacker = await harness.caller(), await harness.caller()
    gid = await finished_generation(victim)
    record = (await victim.get(f"/v1/content/{gid}")).json()["data"]
    files = record["generation_output_file"]

    for method, path in (
        ("GET", f"/v1/content/{gid}"),
        ("DELETE", f"/v1/content/{gid}"),
        ("POST", f"/v1/content/generation/cancel/{gid}"),
    ):
        r = await attacker.client.request(method, path, headers=attacker.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] == "bse_generation_not_found"
        assert record["generation_prompt"] not in r.text and victim.account_id not in r.text

    listing = (await attacker.get("/v1/content/list?limit=100")).json()
    assert listing["total"] == 0 and listing["data"]["generations"] == []
    for path in ("/v1/usage", "/v1/user/account", "/v1/user/billing", "/v1/status"):
        body = (await attacker.get(path)).text
        assert victim.account_id not in body and gid not in body

    # Nothing the attacker did changed the victim's generation or files.
    assert (await victim.get(f"/v1/content/{gid}")).json()["data"] == record
    for url in files:
        assert (await victim.client.get(url)).status_code == 200


async def test_generation_ids_are_not_guessable_from_one_another(harness: Harness) -> None:
    caller = await harness.caller()
    ids = [await finished_generation(caller) for _ in range(3)]
    assert len({i[:8] for i in ids}) == 3  # random, not sequential
    for gid in ids:
        r = await caller.get(f"/v1/content/{gid[:-1]}{'0' if gid[-1] != '0' else '1'}")
        assert r.status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://10.0.0.5/a.png",
        "http://192.168.1.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://localhost/a.png",  # a hostname that resolves to loopback
        "http://0.0.0.0/a.png",
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "http://user:pw@example.com/a.png",
    ],
)
async def test_input_files_at_private_addresses_are_refused_at_create(
    harness_factory: Any, url: str
) -> None:
    h: Harness = await harness_factory(bfl_api_key="bfl-test-key")  # so the model is servable
    caller = await h.caller(credits="1")
    r = await caller.create_image(
        {"generation_prompt": "edit", "generation_input_file": [url]}, model=KONTEXT
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "bse_unsafe_file_url"
    assert r.json()["details"]["field"] == "generation_input_file"
    assert (await caller.get("/v1/content/list")).json()["total"] == 0
    assert (await caller.get("/v1/user/billing")).json()["data"]["billing_credit_balance"] == 1.0


async def test_last_frame_url_is_checked_too(harness_factory: Any) -> None:
    h: Harness = await harness_factory(byteplus_api_key="ark-test-key")
    caller = await h.caller(credits="5")
    r = await caller.post(
        "/v1/generate/video/bytedance/seedance-1-pro",
        json={
            "generation_prompt": "walk",
            "generation_duration": 5,
            "generation_input_file_last_content": "http://169.254.169.254/latest",
        },
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "bse_unsafe_file_url"
    assert r.json()["details"]["field"] == "generation_input_file_last_content"


async def test_too_many_input_files_are_refused(harness_factory: Any) -> None:
    h: Harness = await harness_factory(bfl_api_key="bfl-test-key")
    caller = await h.caller(credits="1")
    urls = [f"https://images.example.com/{i}.png" for i in range(17)]
    r = await caller.create_image({"generation_prompt": "x", "generation_input_file": urls}, model=KONTEXT)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bse_invalid_input"


async def test_a_body_that_trickles_in_is_cut_off_by_the_request_timeout(harness_factory: Any) -> None:
    """A client that opens a create and sends its body slowly holds nothing for long, and
    is told it was too slow (408, retryable) rather than that the server failed."""
    import asyncio

    h: Harness = await harness_factory(request_timeout_seconds=0.3)
    caller = await h.caller(credits="1")
    never = asyncio.Event()  # the rest of the body never comes

    async def trickle() -> Any:
        yield b'{"generation_prompt": '
        await never.wait()
        yield b'"late"}'

    r = await caller.post(
        "/v1/generate/image/local/preview-image",
        content=trickle(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 408, r.text
    body = r.json()
    assert body["error"] == "bse_request_timeout" and body["code"] == "BSE2018"
    assert body["retryable"] is True
    assert "not received in time" in body["message"]
    assert r.headers["connection"] == "close"  # the rest of the body may still be on its way
    assert (await caller.get("/v1/content/list")).json()["total"] == 0
    assert (await caller.get("/v1/user/billing")).json()["data"]["billing_credit_balance"] == 1.0


async def test_a_handler_that_runs_too_long_is_a_server_error_not_the_clients(
    harness_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body arrived whole; the time ran out in genplane, so it is not a 408."""
    import asyncio

    h: Harness = await harness_factory(request_timeout_seconds=0.3)
    caller = await h.caller(credits="1")
    entered = asyncio.Event()

    async def stuck(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(h.services.generations, "create", stuck)
    r = await caller.create_image()
    assert entered.is_set()
    assert r.status_code == 500, r.text
    body = r.json()
    assert body["error"] == "bse_internal_error" and body["retryable"] is True
    assert "0.3 s" in body["message"] and "server" in body["message"]
    assert "not received" not in body["message"] and "send it again" not in body["message"]


# --------------------------------------------------------------------------- input files that break the fetch

INPUT_HOST = "files.test"  # allow-listed, so it is fetched by name from the fake network
INPUT_FILE = f"http://{INPUT_HOST}/in.png"


async def input_file_host(harness_factory: Any, respond: Any) -> Harness:
    """An app whose input files at ``INPUT_HOST`` are answered by ``respond``."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from tests.fakes.network import FakeNetwork

    network = FakeNetwork()
    network.add(INPUT_HOST, Starlette(routes=[Route("/{path:path}", respond)]))
    h: Harness = await harness_factory(
        transport=network, bfl_api_key="bfl-test-key", fetch_allow_hosts=[INPUT_HOST]
    )
    return h


def error_name(record: dict[str, Any]) -> str:
    """The flat name: ``generation_error_name`` per the contract, else the older field."""
    return str(record.get("generation_error_name") or record["generation_error_code"])


async def claims_of(h: Harness, gid: str) -> int:
    from genplane.db.models import Generation

    async with h.services.db.read() as s:
        gen = await s.get(Generation, gid)
        assert gen is not None
        return gen.claims


async def test_input_file_redirecting_to_data_url_fails_cleanly_on_the_first_try(
    harness_factory: Any,
) -> None:
    """httpx cannot even build the redirect to a data: URL; that used to crash the job,
    which was re-claimed and crashed again until the claim limit, ~90 s later."""
    from starlette.requests import Request
    from starlette.responses import Response

    async def respond(request: Request) -> Response:
        return Response(status_code=302, headers={"location": "data:image/png;base64,iVBORw0KGgo="})

    h = await input_file_host(harness_factory, respond)
    caller = await h.caller(credits="1")
    r = await caller.create_image(
        {"generation_prompt": "edit", "generation_input_file": [INPUT_FILE]}, model=KONTEXT
    )
    assert r.status_code == 200, r.text
    gid = r.json()["data"]["generation_id"]
    record = await caller.wait(gid, timeout=5)  # a crash would hold it for a lease (30 s)
    assert record["generation_status"] == "failed"
    # The contract's name for an input URL that is not http(s) after a redirect.
    assert error_name(record) == "bse_unsafe_file_url", record
    assert "redirect" in record["generation_error"] and "InvalidURL" not in record["generation_error"]
    assert await claims_of(h, gid) == 1
    assert (await caller.get("/v1/user/billing")).json()["data"]["billing_credit_balance"] == 1.0


async def test_an_unexpected_exception_in_a_job_fails_it_once_and_refunds(
    harness_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a job must not loop through re-claims, nor show its text to the tenant."""
    from starlette.requests import Request
    from starlette.responses import Response

    from tests.fakes.media import png_bytes

    async def respond(request: Request) -> Response:
        return Response(png_bytes(), media_type="image/png")

    h = await input_file_host(harness_factory, respond)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("/srv/genplane/src/genplane/secret.py: boom")

    monkeypatch.setattr(h.services.worker.chain, "run", broken)
    caller = await h.caller(credits="1")
    r = await caller.create_image(
        {"generation_prompt": "edit", "generation_input_file": [INPUT_FILE]}, model=KONTEXT
    )
    assert r.status_code == 200, r.text
    gid = r.json()["data"]["generation_id"]
    record = await caller.wait(gid, timeout=5)
    assert record["generation_status"] == "failed"
    assert error_name(record) == "bse_internal_error", record
    assert "/srv" not in record["generation_error"] and "boom" not in record["generation_error"]
    assert await claims_of(h, gid) == 1
    assert (await caller.get("/v1/user/billing")).json()["data"]["billing_credit_balance"] == 1.0
