"""Schemathesis against the served API: every operation of the document, generated requests.

The app is served by uvicorn on 127.0.0.1 (a real data dir, the worker, the edge firewall),
and the Schemathesis CLI (``st run``) loads the document from the server's own
``/openapi.json`` and tests every operation in it, with a fixed seed:

- with a full-access key of a funded account: the coverage (boundary and schema-violating
  values), fuzzing (positive and negative data) and stateful phases, and the examples phase
  once the document has examples; the stateful phase follows the document's links (create ->
  read, cancel, delete by generation_id), so real generations are read, canceled and deleted;
- without a usable key (none, or the bearer tokens Schemathesis makes up for bearerAuth), with
  another region's key and with a key that lacks most scopes, the last two asking for the
  nested error shape: the coverage and fuzzing phases.

The checks: no 5xx, and every response conforms to the document (a documented status code,
the documented content type, a body that fits that status's schema, the documented headers).
Not checked: that undeclared methods answer 405 (Schemathesis' unsupported_method); the contract
answers them 404 bse_route_not_found. Schemathesis' own pytest integration is not used: it does
not work with pytest 9 (it sets ``Node._nodeid``, which pytest 9 no longer has).

tests/schemathesis_hooks.py mixes real model identifiers, accepted bodies and real generation
ids into what is generated (see there), so the operations are exercised past "not found"; the
keyed run must see a success from every operation. The create operations are only sent models
this deployment can run: a model whose providers are all unconfigured is a documented 503,
checked on its own below, and would otherwise count as a server error.

Rate limits, the in-flight cap and the firewall's blocking are raised out of the way: the runs
send thousands of requests, deliberately non-conforming ones among them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import structlog.testing
import uvicorn
from schemathesis.specs.openapi import checks

from genplane.accounts import service as accounts
from genplane.accounts.scopes import parse_scopes
from genplane.api.app import create_app
from genplane.catalog.loader import load_catalog
from genplane.credits.money import to_millis
from genplane.settings import Settings
from tests.conftest import make_settings

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
SEED = 20_251_125
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
OPERATIONS = 17
# Fuzzing examples per operation; the stateful phase runs up to as many scenarios of at most
# STATEFUL_STEPS calls. The coverage phase adds the cases it derives from the schema.
EXAMPLES_WITH_KEY = 250
EXAMPLES_WITHOUT_KEY = 40
STATEFUL_STEPS = 8
SDK_HEADER = ("X-BabySea-SDK-Name", "babysea-typescript")  # asks for the nested error shape


@dataclass
class Served:
    url: str
    key: str  # full_access, on a funded account
    monitor_key: str  # monitor_only: health and library only
    other_region_key: str  # well-formed, but of the eu region
    generation_ids: list[str]


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the API did not start"
        assert time.monotonic() < deadline, "the API did not start listening"
        time.sleep(0.01)
    return server, thread, port


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _prepare(settings: Settings) -> tuple[str, str, str, list[str]]:
    """Keys (a funded account's full-access and monitor-only ones, another account's), and
    finished generations: two images and a video of the funded account, one of the other's."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        db = app.state.services.db
        funded = await accounts.create_account(db, "Fuzzed", None, credits_millis=to_millis("1000000"))
        other = await accounts.create_account(db, "Other", None, credits_millis=to_millis("10"))
        keys = [
            await accounts.create_key(db, settings, account.id, preset, parse_scopes(preset, None))
            for account, preset in ((funded, "full_access"), (funded, "monitor_only"), (other, "full_access"))
        ]
        full, monitor, foreign = (issued.key for issued in keys)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            ids = []
            for key, media, body in (
                (full, "image", {"generation_prompt": "a lighthouse", "generation_output_number": 2}),
                (full, "image", {"generation_prompt": "a fox", "generation_output_format": "webp"}),
                (full, "video", {"generation_prompt": "waves", "generation_duration": 1}),
                (foreign, "image", {"generation_prompt": "not yours"}),
            ):
                r = await client.post(
                    f"/v1/generate/{media}/local/preview-{media}", json=body, headers=_bearer(key)
                )
                assert r.status_code == 200, r.text
                ids.append(r.json()["data"]["generation_id"])
            deadline = time.monotonic() + 30
            for generation_id, key in zip(ids, (full, full, full, foreign), strict=True):
                while True:
                    r = await client.get(f"/v1/content/{generation_id}", headers=_bearer(key))
                    if r.json()["data"]["generation_status"] == "succeeded":
                        break
                    assert time.monotonic() < deadline, r.text
                    await asyncio.sleep(0.05)
    return full, monitor, foreign, ids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("schemathesis") / "data"
    overrides: dict[str, Any] = {
        "rate_limit_per_minute": 10_000_000,
        "auth_failures_per_minute": 10_000_000,
        "max_inflight_generations": 10_000_000,
        "firewall_max_rejections": 10_000_000,
        "anomaly_auto_block": [],  # flagged request patterns (id enumeration...) block nobody
    }
    full, monitor, _, finished = asyncio.run(_prepare(make_settings(data_dir, **overrides)))
    # Generations created during the run stay pending or processing, so they can be canceled.
    settings = make_settings(data_dir, local_provider_delay_seconds=3600, **overrides)
    with structlog.testing.capture_logs() as logs:
        server, thread, port = _serve(create_app(settings))
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, headers=_bearer(full), timeout=30) as client:
                unfinished = [
                    client.post(
                        "/v1/generate/image/local/preview-image", json={"generation_prompt": prompt}
                    ).json()["data"]["generation_id"]
                    for prompt in ("still running", "canceled")
                ]
                r = client.post(f"/v1/content/generation/cancel/{unfinished[1]}")
                assert r.status_code == 200, r.text
            yield Served(url, full, monitor, "bye_eu_" + full.split("_", 2)[2], [*finished, *unfinished])
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    errors = [entry for entry in logs if entry.get("log_level") in ("error", "critical")]
    assert not errors, errors


def run_schemathesis(
    served: Served, report: Path, headers: list[tuple[str, str]], *, examples: int, phases: str
) -> dict[str, Any]:
    """``st run`` against the served document; fails with its report unless every check passed."""
    config = report.with_suffix(".toml")
    config.write_text(f"[phases.stateful]\nmax-steps = {STATEFUL_STEPS}\n")
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{served.url}/openapi.json",
        "--seed", str(SEED),
        "--max-examples", str(examples),
        "--phases", phases,
        "--checks", ",".join(CHECKS),
        "--suppress-health-check", "too_slow,filter_too_much",
        "--generation-database", "none",
        "--request-timeout", "30",
        "--workers", "1",
        "--report", "json",
        "--report-json-path", str(report),
    ]  # fmt: skip
    for name, value in headers:
        command += ["--header", f"{name}: {value}"]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "GENPLANE_TEST_GENERATION_IDS": json.dumps(served.generation_ids),
    }
    done = subprocess.run(
        command, env=env, cwd=report.parent, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 or not report.exists():
        start = output.find(" FAILURES ")
        pytest.fail(f"schemathesis exited {done.returncode}:\n{output[max(0, start - 40) :]}", pytrace=False)
    result: dict[str, Any] = json.loads(report.read_text())
    print(  # shown with -s, and with a failure
        f"schemathesis {phases}: {result['test_cases']['generated']} cases over "
        f"{result['operations']['tested']} operations in {result['running_time']:.1f}s, seed {result['seed']}"
    )
    assert result["operations"]["tested"] == OPERATIONS, result["operations"]
    assert not result["failures"] and not result["errors"], output
    result["output"] = output
    return result


def test_every_operation_with_a_key(served: Served, tmp_path: Path) -> None:
    result = run_schemathesis(
        served,
        tmp_path / "with-key.json",
        [("Authorization", f"Bearer {served.key}")],
        examples=EXAMPLES_WITH_KEY,
        phases="examples,coverage,fuzzing,stateful",
    )
    assert result["phases"]["stateful"]["status"] == "success", result["phases"]
    # The stateful phase followed every link, the document's three from each create among them.
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", result["output"])
    assert links is not None, result["output"]
    covered, selected = int(links[1]), int(links[2])
    assert covered == selected >= 6, links[0]
    # Every operation answered some generated request with a success, not only errors.
    assert len(result["valid_rates"]) == OPERATIONS, sorted(result["valid_rates"])
    unanswered = sorted(
        label
        for label, phases in result["valid_rates"].items()
        if not any(counts.get("accepted") for counts in phases.values())
    )
    assert not unanswered, f"no 2xx from: {unanswered}"


@pytest.mark.parametrize(
    "who",
    ["no key", "another region's key", "a monitor-only key"],
)
def test_every_operation_without_a_usable_key(served: Served, tmp_path: Path, who: str) -> None:
    headers = {
        "no key": [],  # Schemathesis sends none, or makes bearer tokens up for bearerAuth
        "another region's key": [("Authorization", f"Bearer {served.other_region_key}"), SDK_HEADER],
        "a monitor-only key": [("Authorization", f"Bearer {served.monitor_key}"), SDK_HEADER],
    }[who]
    run_schemathesis(
        served,
        tmp_path / "without-key.json",
        headers,
        examples=EXAMPLES_WITHOUT_KEY,
        phases="coverage,fuzzing",
    )


def test_unavailable_model_is_a_documented_503(served: Served) -> None:
    """No configured provider serves the model: 503 bse_provider_unavailable, as the document says."""
    catalog = load_catalog()
    unserved = next(
        m for m, e in catalog.models.items() if e.model_type == "image" and "local" not in e.providers
    )
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    case = schema["/v1/generate/image/{model_identifier}"]["POST"].Case(
        path_parameters={"model_identifier": unserved}, body={"generation_prompt": "a fox"}
    )
    response = case.call(base_url=served.url, headers=_bearer(served.key))
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "bse_provider_unavailable"
    assert response.headers["x-request-id"] == [response.json()["request_id"]]
    case.validate_response(
        response,
        checks=[
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
            checks.response_headers_conformance,
        ],
    )
