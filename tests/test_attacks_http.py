"""The attacks of the security review, replayed over real HTTP against ``genplane serve``.

Each one passed on the server as it was: a second ``Authorization`` header smuggled a
blocked key in, ``X-Forwarded-For`` from loopback chose the client's address, storage
errors showed tenants the server's paths, and failures of one client locked out every
key at its address, even after a restart. Slow clients have their own file
(``test_slow_clients.py``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import httpx

from tests.serve_process import BIN, Server

TERMINAL = {"succeeded", "failed", "canceled"}


def genplane(server: Server, *args: str) -> str:
    return subprocess.run(
        [str(BIN / "genplane"), *args],
        env=server.env(), check=True, capture_output=True, text=True, timeout=60,
    ).stdout


def account_id(server: Server) -> str:
    match = re.search(r"\b([0-9a-f-]{36})\b", genplane(server, "accounts", "list"))
    assert match
    return match.group(1)


def new_key(server: Server, *args: str) -> str:
    account = account_id(server)
    out = genplane(server, "keys", "create", "--account", account, "--preset", "full_access", *args)
    match = re.search(r"^(bye_\S+)$", out, re.M)
    assert match, out
    return match.group(1)


def client(server: Server, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=10, trust_env=False)


def wait_terminal(api: httpx.Client, gid: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, object] = api.get(f"/v1/content/{gid}").json()["data"]
        if record["generation_status"] in TERMINAL:
            return record
        assert time.monotonic() < deadline, f"{gid} still {record['generation_status']}"
        time.sleep(0.05)  # polling interval of a client, not a synchronisation


def test_a_blocked_key_cannot_pass_with_a_second_authorization_header(server: Server) -> None:
    key = server.init()
    server.start(GENPLANE_FIREWALL_MAX_REJECTIONS="3")
    with client(server, key) as api:
        assert api.get("/v1/status").status_code == 200
        for i in range(4):
            assert api.get(f"/v1/nope/{i}").status_code == 404
        assert api.get("/v1/status").json()["error"] == "bse_request_blocked"
    with client(server) as raw:
        for pair in ([key, "junk"], ["junk", key]):
            r = raw.post(
                "/v1/generate/image/local/preview-image",
                json={"generation_prompt": "smuggled"},
                headers=[("Authorization", f"Bearer {k}") for k in pair],
            )
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "bse_invalid_input"
            assert r.json()["details"]["header"] == "Authorization"


def test_forwarded_for_from_loopback_does_not_choose_the_clients_address(server: Server) -> None:
    server.init()
    fenced = new_key(server, "--allow-ip", "10.9.8.7")
    server.start()
    with client(server, fenced) as api:
        r = api.get("/v1/status", headers={"X-Forwarded-For": "10.9.8.7"})
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "bse_ip_not_allowed"
        # Nor can it pin its failures on someone else's address.
    with client(server) as raw:
        for _ in range(31):
            raw.get("/v1/status", headers={"X-Forwarded-For": "203.0.113.50"})
        assert raw.get("/v1/status").json()["error"] == "bse_auth_rate_limited"


def test_a_trusted_proxy_is_believed(server: Server) -> None:
    server.init()
    fenced = new_key(server, "--allow-ip", "10.9.8.7")
    server.start(GENPLANE_TRUSTED_PROXIES="127.0.0.1")
    with client(server, fenced) as api:
        assert api.get("/v1/status", headers={"X-Forwarded-For": "10.9.8.7"}).status_code == 200
        r = api.get("/v1/status")  # the proxy's own address is not on the key's list
        assert r.json()["error"] == "bse_ip_not_allowed"


def test_storage_failures_show_tenants_no_internal_path(server: Server) -> None:
    key = server.init()
    server.start()
    files = server.data_dir / "files"
    shutil.rmtree(files)
    files.write_bytes(b"not a directory")  # every write of an output now fails
    with client(server, key) as api:
        r = api.post("/v1/generate/image/local/preview-image", json={"generation_prompt": "a fox"})
        assert r.status_code == 200, r.text
        record = wait_terminal(api, r.json()["data"]["generation_id"])
        health = api.get("/v1/health/storage")
    assert record["generation_status"] == "failed"
    assert record["generation_error_name"] == "bse_storage_error"
    for text in (str(record), health.text):
        assert str(server.data_dir) not in text and str(server.data_dir.parent) not in text
        assert "LocalFileSystem" not in text and "Generic" not in text and "Os {" not in text
    assert health.json()["data"]["healthy"] is False


def test_failures_at_an_address_never_lock_out_a_working_key(server: Server) -> None:
    key = server.init()
    server.start(GENPLANE_FIREWALL_MAX_REJECTIONS="5")
    with client(server) as raw:
        for _ in range(30):
            assert raw.get("/v1/status").status_code == 401
        # The window is a sliding-window *counter*: when a minute boundary falls inside the
        # 30 failures, the previous minute's share decays, so a few more may still get a 401.
        answers = [raw.get("/v1/status").json()["error"] for _ in range(6)]
        assert "bse_auth_rate_limited" in answers, answers
        with client(server, key) as api:
            assert api.get("/v1/status").status_code == 200
        for i in range(6):  # keyless junk: the address is blocked
            raw.get(f"/v1/nope/{i}")
        assert raw.get("/v1/status").json()["error"] == "bse_request_blocked"
    # After a restart this process has never seen the key work; it is still served.
    server.stop_process()
    server.start(GENPLANE_FIREWALL_MAX_REJECTIONS="5")
    with client(server) as raw:
        for i in range(6):
            raw.get(f"/v1/nope/{i}")
        assert raw.get("/v1/status").json()["error"] == "bse_request_blocked"
        bad = raw.get("/v1/status", headers={"Authorization": "Bearer bye_us_" + "Q" * 43})
        assert bad.json()["error"] == "bse_request_blocked"
    with client(server, key) as api:
        assert api.get("/v1/status").status_code == 200
        r = api.post("/v1/generate/image/local/preview-image", json={"generation_prompt": "x"})
        assert r.status_code == 200, r.text
