"""The edge firewall: requests that do not fit the published document are refused before any
handler, counted per key or IP, and a subject over the threshold is blocked for a cool-down.

The per-operation checks are driven by the document itself, so a new operation (or a new
parameter) is covered without touching this file.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from genplane.api.blocklist import MemoryFirewallStore, ip_subject, key_subject
from genplane.api.firewall import compile_rules, json_too_deep
from genplane.api.openapi import app_spec, route_table
from genplane.contract.errors import ERRORS
from genplane.db.models import ApiKey
from tests.conftest import Caller, Harness

MAX_BODY = 100 * 1024
IMAGE = "/v1/generate/image/local/preview-image"
FIREWALL_ERRORS = {"bse_route_not_found", "bse_invalid_input", "bse_payload_too_large", "bse_request_blocked"}
# Example values for path parameters, by name; any other one gets a plain token.
PATH_EXAMPLES = {"model_identifier": "local/preview-image", "generation_id": "gen_unknown"}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
Logs = list[dict[str, Any]]


def assert_error(r: httpx.Response, status: int, name: str, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "error"
    assert body["error"] == name, body
    assert body["code"].startswith("BSE")
    assert body["retryable"] is False
    assert r.headers["X-Request-Id"] == body["request_id"]
    if field is not None:
        assert body.get("details", {}).get("field") == field, body
    return body


def rejected(logs: Logs) -> Logs:
    return [e for e in logs if e["event"] == "firewall_rejected"]


@contextmanager
def no_rejection(what: str) -> Iterator[None]:
    with capture_logs() as logs:
        yield
    assert rejected(logs) == [], (what, rejected(logs))


async def strict_harness(harness_factory: Callable[..., Any], **overrides: Any) -> Harness:
    """Thresholds high enough that the checks below never block the caller."""
    h: Harness = await harness_factory(firewall_max_rejections=1_000_000, **overrides)
    return h


def client_from(h: Harness, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=h.app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frozen_clock(h: Harness) -> Clock:
    clock = Clock()
    store = h.services.blocklist
    assert isinstance(store, MemoryFirewallStore)
    store.clock = clock
    return clock


# -- the document, as the tests read it ----------------------------------------------------------


def resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        schema = node
    return schema


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method.upper(), op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in {m.lower() for m in METHODS}
    ]


def valid_value(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if "enum" in schema:
        return str(schema["enum"][0])
    if kind == "integer":
        return str(schema.get("default", schema.get("minimum", 1)))
    if kind == "number":
        return str(schema.get("minimum", 1))
    if kind == "boolean":
        return "true"
    return "k1" if schema.get("maxLength", 2) >= 2 else "k"


def bad_values(schema: dict[str, Any]) -> list[str]:
    """Values the schema does not allow."""
    kind = schema.get("type")
    out: list[str] = []
    if kind in ("integer", "number"):
        out += ["abc", "", "1e", "--1"]
        if kind == "integer":
            out.append("1.5")
        if "minimum" in schema:
            out += [str(schema["minimum"] - 1), "-" + "9" * 40]
        if "maximum" in schema:
            out += [str(schema["maximum"] + 1), "9" * 40]
    elif kind == "boolean":
        out += ["maybe", "2", ""]
    elif kind == "string":
        if "maxLength" in schema:
            out.append("x" * (schema["maxLength"] + 1))
        if "enum" in schema:
            out.append("zz-not-listed")
    return out


def example_body(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    schema = resolve(schema, doc)
    body: dict[str, Any] = {}
    for name in schema.get("required", []):
        prop = resolve(schema["properties"][name], doc)
        body[name] = {"integer": 1, "number": 1, "boolean": True}.get(prop.get("type", ""), "x")
    return body


def build(path: str, op: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """A request that fits ``op``: every declared parameter with a valid value, and its body."""
    params = [resolve(p, doc) for p in op.get("parameters", [])]
    url = path
    for p in params:
        if p["in"] == "path":
            url = url.replace("{" + p["name"] + "}", PATH_EXAMPLES.get(p["name"], "abc123"))
    query = {p["name"]: valid_value(resolve(p["schema"], doc)) for p in params if p["in"] == "query"}
    headers = {
        p["name"]: valid_value(resolve(p["schema"], doc)) + uuid.uuid4().hex[:8]
        for p in params
        if p["in"] == "header"
    }
    request: dict[str, Any] = {"url": url, "params": query, "headers": headers}
    body = op.get("requestBody")
    if body:
        schema = body["content"]["application/json"]["schema"]
        request["json"] = example_body(schema, doc)
    return request


# -- paths and methods --------------------------------------------------------------------------


async def test_the_matcher_covers_exactly_the_documents_operations(harness: Harness) -> None:
    doc = app_spec(harness.app)
    rules = compile_rules(doc, (p for p, _, _ in route_table(harness.app)))
    assert {(op.method, op.path) for op in rules.operations()} == {
        (method, path) for path, method, _ in operations(doc)
    }
    # The model identifier keeps its slash, a generation id cannot have one; literal paths win.
    found = rules.match("/v1/estimate/bfl/flux-schnell")
    assert found is not None and found[1] == {"model_identifier": "bfl/flux-schnell"}
    assert rules.match("/v1/content/a/b") is None
    found = rules.match("/v1/content/list")
    assert found is not None and set(found[0]) == {"GET"} and found[1] == {}


async def test_every_undeclared_method_of_every_path_is_route_not_found(
    harness: Harness, caller: Caller
) -> None:
    doc = app_spec(harness.app)
    checked = 0
    for path, item in doc["paths"].items():
        url = path
        for name, example in PATH_EXAMPLES.items():
            url = url.replace("{" + name + "}", example)
        for method in METHODS:
            if method.lower() in item:
                continue
            with capture_logs() as logs:
                r = await caller.client.request(method, url, headers=caller.headers)
            assert r.status_code == 404, (method, url, r.text)
            if method != "HEAD":
                assert_error(r, 404, "bse_route_not_found")
            assert [e["reason"] for e in rejected(logs)] == ["unknown_method"]
            checked += 1
    assert checked > 60


@pytest.mark.parametrize(
    "path",
    [
        "/index.html",  # "/" itself is the Playground (genplane.web)
        "/v1",
        "/v1/nope",
        "/v1/status/",
        "/v1/content/a/b",
        "/v2/status",
        "/v1/generate/image",
        "/v1/library/models/x",
        "/V1/STATUS",
        "/openapi.yaml",
        "/files",
    ],
)
async def test_undeclared_paths_are_route_not_found(caller: Caller, path: str) -> None:
    with capture_logs() as logs:
        r = await caller.get(path)
    assert_error(r, 404, "bse_route_not_found")
    assert [(e["reason"], e["path"]) for e in rejected(logs)] == [("unknown_path", path)]
    nested = await caller.get(path, headers={"X-BabySea-SDK-Name": "babysea-typescript"})
    assert nested.status_code == 404
    assert nested.json()["error"]["code"] == "BSE2017"


async def test_the_served_document_docs_and_files_stay_reachable(caller: Caller) -> None:
    with no_rejection("openapi/docs"):
        assert (await caller.client.get("/openapi.json")).status_code == 200
        assert (await caller.client.get("/docs")).status_code == 200
        missing = await caller.client.get("/files/nothing/here.png")
    assert_error(missing, 404, "bse_route_not_found")  # answered by the file route itself
    r = await caller.create_image()
    record = await caller.wait(r.json()["data"]["generation_id"])
    url = httpx.URL(record["generation_output_file"][0])
    with no_rejection("file"):
        assert (await caller.client.get(url.path)).status_code == 200
    assert_error(await caller.client.post("/openapi.json"), 404, "bse_route_not_found")


# -- parameters, driven by the document ----------------------------------------------------------


async def test_every_operation_accepts_its_declared_parameters(harness_factory: Callable[..., Any]) -> None:
    h = await strict_harness(harness_factory)
    caller = await h.caller()
    doc = app_spec(h.app)
    for path, method, op in operations(doc):
        req = build(path, op, doc)
        with no_rejection((method, path)):
            r = await caller.client.request(
                method,
                req["url"],
                params=req["params"],
                json=req.get("json"),
                headers={**caller.headers, **req["headers"]},
            )
        if r.status_code >= 400:
            assert r.json()["error"] not in FIREWALL_ERRORS - {"bse_invalid_input"}, (method, path, r.text)


async def test_every_declared_parameter_is_checked(harness_factory: Callable[..., Any]) -> None:
    h = await strict_harness(harness_factory)
    caller = await h.caller()
    doc = app_spec(h.app)
    covered: set[tuple[str, str]] = set()

    async def refused(method: str, url: str, field: str, **kw: Any) -> None:
        headers = {**caller.headers, **kw.pop("headers", {})}
        with capture_logs() as logs:
            r = await caller.client.request(method, url, headers=headers, **kw)
        assert_error(r, 400, "bse_invalid_input", field)
        assert len(rejected(logs)) == 1, (method, url, kw)

    for path, method, op in operations(doc):
        req = build(path, op, doc)
        base = {"json": req.get("json")}
        # Undeclared and repeated query parameters, on every operation.
        await refused(
            method,
            req["url"],
            "zz_undeclared",
            params={**req["params"], "zz_undeclared": "1"},
            headers=req["headers"],
            **base,
        )
        params = [resolve(p, doc) for p in op.get("parameters", [])]
        for p in params:
            schema = resolve(p["schema"], doc)
            name = p["name"]
            if p["in"] == "query":
                repeated = [*req["params"].items(), (name, req["params"][name])]
                await refused(method, req["url"], name, params=repeated, headers=req["headers"], **base)
                for bad in bad_values(schema):
                    await refused(
                        method,
                        req["url"],
                        name,
                        params={**req["params"], name: bad},
                        headers=req["headers"],
                        **base,
                    )
                    covered.add((name, bad))
                if p.get("required"):
                    rest = {k: v for k, v in req["params"].items() if k != name}
                    await refused(method, req["url"], name, params=rest, headers=req["headers"], **base)
            elif p["in"] == "header":
                for bad in bad_values(schema):
                    await refused(
                        method,
                        req["url"],
                        name,
                        params=req["params"],
                        headers={**req["headers"], name: bad},
                        **base,
                    )
                    covered.add((name, bad))
            elif p["in"] == "path":
                for bad in bad_values(schema):
                    if bad:
                        url = path.replace("{" + name + "}", quote(bad))
                        for other, example in PATH_EXAMPLES.items():
                            url = url.replace("{" + other + "}", example)
                        await refused(method, url, name, params=req["params"], headers=req["headers"], **base)
                        covered.add((name, bad))
    names = {name for name, _ in covered}
    assert {"days", "count", "duration", "resolution", "audio", "limit", "offset"} <= names
    assert {"generation_id", "Idempotency-Key"} <= names
    assert ("limit", "101") in covered and ("offset", "-1") in covered and ("days", "91") in covered


async def test_malformed_query_strings(harness_factory: Callable[..., Any]) -> None:
    h = await strict_harness(harness_factory)
    caller = await h.caller()
    r = await caller.get("/v1/content/list?limit=%FF")
    assert_error(r, 400, "bse_invalid_input", "query")
    r = await caller.get("/v1/content/list?=5")
    assert_error(r, 400, "bse_invalid_input", "")
    with no_rejection("well-formed"):
        r = await caller.get("/v1/content/list?limit=100&offset=0")
    assert r.status_code == 200, r.text
    with no_rejection("booleans as the SDK sends them"):
        for value in ("true", "false", "1", "0"):
            r = await caller.get(f"/v1/estimate/local/preview-video?audio={value}&duration=5")
            assert r.json().get("error") not in FIREWALL_ERRORS, r.text


async def test_integers_without_bounds_may_be_of_any_size(caller: Caller) -> None:
    """estimate's count is documented without bounds (and clamped): big integers are integers too."""
    with no_rejection("a 30-digit count"):
        r = await caller.get("/v1/estimate/local/preview-image?count=" + "9" * 30)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["assets_count"] == 100
    with no_rejection("a negative 30-digit count"):
        r = await caller.get("/v1/estimate/local/preview-image?count=-" + "9" * 30)
    assert r.json()["data"]["assets_count"] == 1
    r = await caller.get("/v1/content/list?offset=" + "9" * 30)  # declared bounds still hold
    assert_error(r, 400, "bse_invalid_input", "offset")


# -- sizes and bodies -----------------------------------------------------------------------------


async def _chunks(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def padded(size: int, prompt: str = "padded") -> bytes:
    core = b'{"generation_prompt": "' + prompt.encode() + b'"}'
    return core + b" " * (size - len(core))


async def test_oversize_bodies_are_413_with_and_without_content_length(
    harness_factory: Callable[..., Any],
) -> None:
    h = await strict_harness(harness_factory)
    caller = await h.caller()
    with capture_logs() as logs:
        r = await caller.post(
            IMAGE, content=padded(MAX_BODY + 1), headers={"Content-Type": "application/json"}
        )
    assert_error(r, 413, "bse_payload_too_large")
    assert rejected(logs)[0]["reason"] == "body_too_large"

    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            produced += 1
            yield b" " * 8192

    r = await caller.post(IMAGE, content=endless(), headers={"Content-Type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_error(r, 413, "bse_payload_too_large")
    assert produced <= MAX_BODY // 8192 + 2  # it stopped reading just past 100 KB

    # A body of exactly 100 KB, streamed, passes and reaches the service intact.
    with no_rejection("100 KB chunked"):
        r = await caller.post(
            IMAGE, content=_chunks(padded(MAX_BODY, "é" * 1000)), headers={"Content-Type": "application/json"}
        )
    assert r.status_code == 200, r.text
    record = await caller.wait(r.json()["data"]["generation_id"])
    assert record["generation_prompt"] == "é" * 1000


def nested(depth: int) -> bytes:
    return b'{"generation_prompt": "x", "generation_seed": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize(
    ("name", "raw", "content_type", "field", "reason"),
    [
        ("33 levels", nested(33), "application/json", "body", "body_too_deep"),
        ("5000 levels", nested(5000), "application/json", "body", "body_too_deep"),
        ("invalid utf-8", b'{"generation_prompt": "\xff\xfe"}', "application/json", "body", "body_not_utf8"),
        (
            "lone surrogate",
            b'{"generation_prompt": "\xed\xa0\x80"}',
            "application/json",
            "body",
            "body_not_utf8",
        ),
        ("not json", b'{"generation_prompt": ', "application/json", "body", "body_not_json"),
        ("a list", b'[{"generation_prompt": "x"}]', "application/json", "body", "body_type"),
        ("a string", b'"x"', "application/json", "body", "body_type"),
        ("empty", b"", "application/json", "body", "body_missing"),
        ("text/plain", b'{"generation_prompt": "x"}', "text/plain", "Content-Type", "content_type"),
        ("form", b"generation_prompt=x", "application/x-www-form-urlencoded", "Content-Type", "content_type"),
        (
            "latin-1",
            b'{"generation_prompt": "x"}',
            "application/json; charset=latin-1",
            "Content-Type",
            "content_type",
        ),
    ],
)
async def test_bodies_that_do_not_fit_are_refused_and_create_nothing(
    harness_factory: Callable[..., Any], name: str, raw: bytes, content_type: str, field: str, reason: str
) -> None:
    h = await strict_harness(harness_factory)
    caller = await h.caller()
    with capture_logs() as logs:
        r = await caller.post(IMAGE, content=raw, headers={"Content-Type": content_type})
    assert_error(r, 400, "bse_invalid_input", field)
    assert [e["reason"] for e in rejected(logs)] == [reason]
    listed = await caller.get("/v1/content/list")
    assert listed.json()["total"] == 0


async def test_bodies_that_fit_pass(harness_factory: Callable[..., Any]) -> None:
    h = await strict_harness(harness_factory)
    caller = await h.caller()
    with no_rejection("32 levels"):
        r = await caller.post(IMAGE, content=nested(32), headers={"Content-Type": "application/json"})
    # The firewall lets it through; the service then refuses the seed's type.
    assert_error(r, 400, "bse_invalid_input", "generation_seed")
    body = b'{"generation_prompt": "x"}'
    for content_type in ("application/json", "application/json; charset=utf-8", "APPLICATION/JSON", None):
        headers = {"Content-Type": content_type} if content_type else {}
        with no_rejection(content_type):
            r = await caller.post(IMAGE, content=body, headers=headers)
        assert r.status_code == 200, (content_type, r.text)


async def test_operations_without_a_body_refuse_one(caller: Caller) -> None:
    r = await caller.client.request(
        "GET",
        "/v1/status",
        content=b'{"a": 1}',
        headers={**caller.headers, "Content-Type": "application/json"},
    )
    assert_error(r, 400, "bse_invalid_input", "body")
    r = await caller.post("/v1/content/generation/cancel/gen_x", content=b"x")
    assert_error(r, 400, "bse_invalid_input", "body")
    with no_rejection("empty body"):
        r = await caller.post("/v1/content/generation/cancel/gen_x", content=b"")
    assert_error(r, 404, "bse_generation_not_found")


async def raw_request(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    """One request straight into the ASGI app, for headers httpx would not send."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return status, orjson.loads(payload)


async def test_content_length_and_header_limits(harness: Harness, caller: Caller) -> None:
    auth = (b"authorization", f"Bearer {caller.key}".encode())
    status, body = await raw_request(harness.app, "POST", IMAGE, [auth, (b"content-length", b"abc")])
    assert (status, body["error"], body["details"]["field"]) == (400, "bse_invalid_input", "Content-Length")
    status, body = await raw_request(
        harness.app, "POST", IMAGE, [auth, (b"content-length", str(10**9).encode())], b"{}"
    )
    assert (status, body["error"]) == (413, "bse_payload_too_large")

    r = await caller.get("/v1/status", headers={"X-Big": "x" * 9000})
    assert_error(r, 400, "bse_invalid_input", "x-big")
    many = {f"X-Pad-{i}": "x" * 1000 for i in range(20)}
    r = await caller.get("/v1/status", headers=many)
    assert_error(r, 400, "bse_invalid_input", "headers")
    r = await caller.get("/v1/estimate/" + "a/" * 2100 + "b")
    assert_error(r, 400, "bse_invalid_input", "url")
    with no_rejection("ordinary headers"):
        r = await caller.get("/v1/status", headers={"X-Big": "x" * 7000})
    assert r.status_code == 200


# -- counting and blocking ------------------------------------------------------------------------


async def test_a_thousand_undeclared_paths_block_the_ip_until_the_cool_down(
    harness_factory: Callable[..., Any],
) -> None:
    # Default thresholds: 100 / 60 s / 300 s. The in-memory store (the test moves its clock),
    # in either test configuration.
    h: Harness = await harness_factory(client_host="203.0.113.7", redis_url="")
    clock = frozen_clock(h)
    owner = await h.caller()
    elsewhere = client_from(h, "198.51.100.9")
    try:
        assert (await elsewhere.get("/v1/status", headers=owner.headers)).status_code == 200
        statuses: list[int] = []
        with capture_logs() as logs:
            for i in range(1000):
                r = await h.client.get(f"/v1/undeclared/{i}")
                statuses.append(r.status_code)
                if r.status_code == 403:
                    body = assert_error(r, 403, "bse_request_blocked")
                    assert r.headers["Retry-After"] == "300"
                    # The limit that refused: the rejections per window that start a block.
                    assert r.headers["X-RateLimit-Limit"] == "100"
                    assert r.headers["X-RateLimit-Remaining"] == "0"
                    assert int(r.headers["X-RateLimit-Reset"]) >= time.time() + 299
                    assert body["details"]["retry_after_seconds"] == 300
        # The 101st rejection within the window starts the block; the rest are turned away.
        assert statuses == [404] * 101 + [403] * 899
        assert len(rejected(logs)) == 101
        blocks = [e for e in logs if e["event"] == "firewall_blocked"]
        assert [(b["ip"], b["subject"], b["seconds"]) for b in blocks] == [("203.0.113.7", "ip", 300.0)]

        # Everything from that address is blocked (valid requests, the document, keys never seen
        # working from it); other addresses are not, not even for non-conforming requests.
        assert_error(await h.client.get("/openapi.json"), 403, "bse_request_blocked")
        assert_error(
            await h.client.get("/v1/status", headers={"Authorization": "Bearer bye_us_" + "x" * 43}),
            403,
            "bse_request_blocked",
        )
        nested = await h.client.get("/v1/nope", headers={"X-BabySea-SDK-Name": "babysea-typescript"})
        assert nested.status_code == 403
        assert nested.json()["error"]["code"] == "BSE1090"
        assert nested.json()["error"]["type"] == "request_blocked"
        assert (await elsewhere.get("/v1/status", headers=owner.headers)).status_code == 200
        assert_error(await elsewhere.get("/v1/nope"), 404, "bse_route_not_found")

        clock.now += 299
        r = await h.client.get("/v1/nope")
        assert_error(r, 403, "bse_request_blocked")
        assert r.headers["Retry-After"] == "1"
        clock.now += 1.5
        assert_error(await h.client.get("/v1/nope"), 404, "bse_route_not_found")
        assert (await h.client.get("/v1/status", headers=owner.headers)).status_code == 200
    finally:
        await elsewhere.aclose()


async def test_a_keys_rejections_block_that_key_not_another_key_of_the_same_ip(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(firewall_max_rejections=5, redis_url="")  # its clock moves below
    clock = frozen_clock(h)
    a = await h.caller()
    b = await h.key_for(a, preset="full_access")
    for c in (a, b):  # keys that have authenticated are judged as keys
        assert (await c.get("/v1/status")).status_code == 200
    for _ in range(6):
        assert_error(await a.get("/v1/status?zz=1"), 400, "bse_invalid_input", "zz")
    r = await a.get("/v1/status")
    assert_error(r, 403, "bse_request_blocked")
    assert int(r.headers["Retry-After"]) == 300
    assert (await b.get("/v1/status")).status_code == 200
    # The address was not charged for the key's rejections.
    assert_error(await h.client.get("/v1/nope"), 404, "bse_route_not_found")
    clock.now += 301
    assert (await a.get("/v1/status")).status_code == 200


async def test_made_up_keys_are_counted_against_the_ip(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(firewall_max_rejections=5)
    known = await h.caller()
    assert (await known.get("/v1/status")).status_code == 200
    for _ in range(6):
        fake = "bye_us_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]
        assert_error(
            await h.client.get("/v1/nope", headers={"Authorization": f"Bearer {fake}"}),
            404,
            "bse_route_not_found",
        )
    assert_error(await h.client.get("/v1/status"), 403, "bse_request_blocked")
    made_up = {"Authorization": "Bearer bye_us_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]}
    assert_error(await h.client.get("/v1/status", headers=made_up), 403, "bse_request_blocked")
    # A working key is never refused for its address, even one this process has not seen work.
    fresh = await h.key_for(known, preset="full_access")
    assert (await fresh.get("/v1/status")).status_code == 200
    assert (await known.get("/v1/status")).status_code == 200


async def test_blocked_requests_never_reach_authentication_or_the_database(
    harness_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    h: Harness = await harness_factory(firewall_max_rejections=3, key_touch_interval_seconds=0)
    caller = await h.caller()
    assert (await caller.get("/v1/status")).status_code == 200
    for _ in range(4):
        await caller.get("/v1/nope")

    async def last_used() -> Any:
        async with h.services.db.read() as s:
            return (await s.scalars(select(ApiKey.last_used_at).where(ApiKey.id == caller.key_id))).one()

    before = await last_used()
    calls: list[str] = []
    real_read, real_write = h.services.db.read, h.services.db.write
    requests = asyncio.current_task()  # the in-process transport serves requests in this task

    async def authenticate(*args: Any, **kw: Any) -> Any:
        calls.append("authenticate")
        raise AssertionError("a blocked request reached authentication")

    def read() -> Any:
        if asyncio.current_task() is requests:  # not the worker's sweep meanwhile
            calls.append("db.read")
        return real_read()

    def write() -> Any:
        if asyncio.current_task() is requests:
            calls.append("db.write")
        return real_write()

    monkeypatch.setattr(h.services.authenticator, "authenticate", authenticate)
    monkeypatch.setattr(h.services.db, "read", read)
    monkeypatch.setattr(h.services.db, "write", write)
    for path in ("/v1/status", "/v1/content/list", "/v1/nope", IMAGE):
        r = await caller.get(path) if path != IMAGE else await caller.create_image()
        assert_error(r, 403, "bse_request_blocked")
    assert calls == []
    monkeypatch.undo()
    assert await last_used() == before


async def test_the_full_key_never_appears_in_the_logs(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(firewall_max_rejections=2)
    caller = await h.caller()
    assert (await caller.get("/v1/status")).status_code == 200
    with capture_logs() as logs:
        for _ in range(3):
            await caller.get("/v1/nope")
        await caller.get("/v1/status")  # blocked
        await h.client.get("/v1/nope", headers={"Authorization": "Bearer Sh0rt-T0k"})
        await h.client.get("/v1/nope", headers={"Authorization": "Basic dXNlcjpzZWNyZXQ="})
    text = repr(logs)
    assert caller.key not in text
    assert caller.key[:10] not in text
    assert "Sh0rt-T0k" not in text and "dXNlcjpzZWNyZXQ" not in text
    events = rejected(logs)
    assert [e["key_prefix"] for e in events] == [caller.key[:9]] * 3 + ["(short)", None]
    assert all(set(e) >= {"key_prefix", "ip", "method", "path", "reason"} for e in events)
    assert [e["event"] for e in logs].count("firewall_blocked") == 1


def test_the_window_slides_and_blocks_end() -> None:
    clock = Clock()
    store = MemoryFirewallStore(3, 60.0, 300.0, clock=clock)

    async def run() -> None:
        for _ in range(3):
            assert await store.record_rejection("ip:a") == 0
        clock.now += 61  # those three left the window
        for _ in range(3):
            assert await store.record_rejection("ip:a") == 0
        assert await store.blocked_for("ip:a") == 0
        assert await store.record_rejection("ip:a") == 300.0
        assert await store.blocked_for("ip:a") == 300.0
        assert await store.blocked_for("ip:b") == 0
        clock.now += 300
        assert await store.blocked_for("ip:a") == 0
        assert await store.record_rejection("ip:a") == 0  # counting starts afresh

    asyncio.run(run())


def test_memory_stays_bounded_under_a_spray_of_addresses() -> None:
    clock = Clock()
    store = MemoryFirewallStore(3, 60.0, 300.0, clock=clock, max_subjects=100)

    async def run() -> None:
        for i in range(1000):
            await store.record_rejection(f"ip:{i}")
            await store.mark_verified(f"key:{i}", "acct")
        assert len(store._hits) <= 100
        assert len(store._verified) <= 100

    asyncio.run(run())


def test_subjects() -> None:
    assert ip_subject("203.0.113.7") == "ip:203.0.113.7"
    assert ip_subject("2001:db8:1:2:aaaa::1") == ip_subject("2001:db8:1:2:bbbb::2") == "ip:2001:db8:1:2::/64"
    assert ip_subject("2001:db8:1:3::1") != ip_subject("2001:db8:1:2::1")
    key = "bye_us_" + "k" * 43
    assert key not in key_subject(key) and key_subject(key) != key_subject(key[:-1] + "j")


def test_json_depth() -> None:
    assert not json_too_deep({"a": [[1]]}, 3)
    assert json_too_deep({"a": [[[1]]]}, 3)
    assert not json_too_deep([1, 2, {"b": {}}], 3)
    assert not json_too_deep("scalar", 1)


async def test_firewall_off_lets_requests_through_to_the_app(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(firewall_enabled=False)
    caller = await h.caller()
    with no_rejection("firewall off"):
        assert (await caller.get("/v1/status?zz=1")).status_code == 200  # FastAPI ignores it
        r = await caller.post(
            IMAGE, content=padded(MAX_BODY + 1), headers={"Content-Type": "application/json"}
        )
    assert_error(r, 413, "bse_payload_too_large")  # the edge's own Content-Length guard
    assert_error(await caller.get("/v1/nope"), 404, "bse_route_not_found")


async def test_a_known_keys_rejections_show_in_its_own_usage(caller: Caller) -> None:
    assert (await caller.get("/v1/status")).status_code == 200
    assert_error(await caller.get("/v1/content/list?limit=500"), 400, "bse_invalid_input", "limit")
    assert_error(await caller.get("/v1/nope"), 404, "bse_route_not_found")  # no operation: not an endpoint
    r = await caller.get("/v1/usage")
    rows = {row["endpoint"]: row for row in r.json()["data"]["usage_endpoints"]}
    assert set(rows) == {"GET /v1/status", "GET /v1/content/list"}
    listed = rows["GET /v1/content/list"]
    assert (listed["total_requests"], listed["client_error_count"]) == (1, 1)
    assert listed["error_codes"] == {ERRORS["bse_invalid_input"].code: 1}
