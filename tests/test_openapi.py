"""The committed openapi.yaml is the app's own document, in OpenAPI 3.0.3, of exactly the 17 operations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from genplane.api.openapi import build_openapi, to_30, to_yaml
from tests.conftest import Harness

ROOT = Path(__file__).resolve().parents[1]

CONTRACT_OPERATIONS = {
    ("get", "/v1/status"), ("get", "/v1/usage"), ("get", "/v1/user/account"), ("get", "/v1/user/billing"),
    ("get", "/v1/estimate/{model_identifier}"), ("post", "/v1/generate/image/{model_identifier}"),
    ("post", "/v1/generate/video/{model_identifier}"), ("get", "/v1/content/{generation_id}"),
    ("get", "/v1/content/list"), ("delete", "/v1/content/{generation_id}"),
    ("post", "/v1/content/generation/cancel/{generation_id}"), ("get", "/v1/library/providers"),
    ("get", "/v1/library/models"), ("get", "/v1/health/inference/providers"),
    ("get", "/v1/health/inference/models"), ("get", "/v1/health/storage"), ("get", "/v1/health/cache"),
}


def _walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


async def test_committed_document_is_what_the_app_generates(harness: Harness) -> None:
    generated = to_yaml(build_openapi(harness.app))
    committed = (ROOT / "openapi.yaml").read_text()
    assert committed == generated, "openapi.yaml is stale: run `make openapi` and commit it"


async def test_document_lists_exactly_the_contract_operations(harness: Harness) -> None:
    doc = build_openapi(harness.app)
    assert doc["openapi"] == "3.0.3"
    ops = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert ops == CONTRACT_OPERATIONS
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(set(ids)) == 17


async def test_document_uses_only_openapi_30_schema_keywords(harness: Harness) -> None:
    doc = build_openapi(harness.app)
    for node in _walk(doc):
        assert "const" not in node
        assert "examples" not in node or not isinstance(node["examples"], list)
        assert not isinstance(node.get("type"), list)
        for key in ("anyOf", "oneOf"):
            assert all(opt.get("type") != "null" for opt in node.get(key, []))


def test_to_30_rewrites_nullable_and_const() -> None:
    src = {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}], "default": None}
    assert to_30(src) == {"type": "string", "maxLength": 3, "default": None, "nullable": True}
    assert to_30({"const": "success", "type": "string"}) == {"enum": ["success"], "type": "string"}
    assert to_30({"exclusiveMinimum": 0}) == {"minimum": 0, "exclusiveMinimum": True}


async def test_served_document_and_docs_page(harness: Harness) -> None:
    r = await harness.client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json() == yaml.safe_load((ROOT / "openapi.yaml").read_text())
    page = await harness.client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/v1/generate/image/{model_identifier}" in page.text
    assert "bse_insufficient_credits" in page.text
    assert "<script src=" not in page.text  # self-contained: nothing fetched from other hosts
