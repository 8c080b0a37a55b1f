"""The published OpenAPI 3.0.3 document, derived from the app's routes.

FastAPI emits OpenAPI 3.1 (JSON Schema 2020-12); the contract publishes 3.0.3, so
the generated document is rewritten into the 3.0 dialect (``nullable`` instead of
``null`` types, ``enum`` instead of ``const``, single ``example``). The result is
committed as ``openapi.yaml`` and a test keeps the two identical.
"""

from __future__ import annotations

from typing import Any

import yaml
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import iter_route_contexts

from genplane.catalog.fields import GenerationBody
from genplane.contract.errors import ERRORS

SERVERS = [
    {"url": f"https://api.{r}.genplane.local", "description": f"{r} region (example host)"}
    for r in ("us", "eu", "jp")
]


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def to_30(node: Any) -> Any:
    """Rewrite a JSON Schema 2020-12 fragment into OpenAPI 3.0's schema dialect."""
    if isinstance(node, list):
        return [to_30(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_30(v) for k, v in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and any(_is_null(o) for o in options):
            rest = [o for o in options if not _is_null(o)]
            out.pop(key)
            if len(rest) == 1:
                merged = dict(rest[0]) if "$ref" not in rest[0] else {"allOf": [rest[0]]}
                merged.update({k: v for k, v in out.items()})
                out = merged
            else:
                out[key] = rest
            out["nullable"] = True
    if isinstance(out.get("type"), list):
        types = [t for t in out["type"] if t != "null"]
        if len(types) != len(out["type"]):
            out["nullable"] = True
        out["type"] = types[0] if len(types) == 1 else types
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "examples" in out and isinstance(out["examples"], list):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out[flag] = out.pop(bound)
            out[bound] = True
    out.pop("$schema", None)
    if out.get("title") and "properties" not in out and "$ref" not in out and "enum" not in out:
        out.pop("title")
    return out


def _header(description: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


# Response headers, declared once (components/headers) and referenced by each response
# that carries them; ``required`` holds wherever a header is referenced.
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": _header(
        "The request's id, equal to the body's request_id.",
        {"type": "string", "pattern": "^req_[0-9A-Za-z]+$"},
    ),
    "X-RateLimit-Limit": _header(
        "Requests the account may send per minute.", {"type": "integer", "minimum": 1}
    ),
    "X-RateLimit-Remaining": _header(
        "Requests left in the current window.", {"type": "integer", "minimum": 0}
    ),
    "X-RateLimit-Reset": _header(
        "When the current window ends, in Unix seconds.", {"type": "integer", "minimum": 0}
    ),
    "Retry-After": _header(
        "Seconds to wait before sending the request again.", {"type": "integer", "minimum": 1}
    ),
    "Idempotency-Replayed": _header(
        "Sent as 'true' when this is the stored response to an earlier request with the same "
        "Idempotency-Key and body.",
        {"type": "string", "enum": ["true"]},
        required=False,
    ),
    "Preference-Applied": _header(
        "Sent as 'wait=N' when the request's Prefer: wait was honoured: the answer waited up to "
        "N seconds for the generation to end (RFC 7240).",
        {"type": "string", "pattern": "^wait=[0-9]+$"},
        required=False,
    ),
}


def _response_headers(operation_id: str, status: str) -> dict[str, Any]:
    """The headers a response of ``status`` always carries (and the optional replay marker)."""
    names = ["X-Request-Id"]
    if status.startswith("2"):
        # Every operation authenticates (and counts the request) before it can succeed.
        names += ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
        if operation_id in ("generateImage", "generateVideo"):
            names.append("Idempotency-Replayed")
        if operation_id in ("generateImage", "generateVideo", "getContent"):
            names.append("Preference-Applied")
    elif status == "429":
        # Request rate, failed-authentication rate, in-flight cap: each names its limit.
        names += ["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title="genplane API",
        version=app.version,
        description=(
            "Execution control plane for generative media; wire-compatible with the BabySea /v1 API. "
            "Every operation requires 'Authorization: Bearer bye_...'. Errors use one registry: "
            + ", ".join(f"{e.name} ({e.code}, {e.http_status})" for e in ERRORS.values())
            + "."
        ),
        routes=app.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    body_schema = GenerationBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas["GenerationRequest"] = body_schema
    doc.setdefault("components", {})["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key, bye_<region>_..."}
    }
    doc["components"]["headers"] = RESPONSE_HEADERS
    doc["security"] = [{"bearerAuth": []}]
    doc["servers"] = SERVERS
    for item in doc.get("paths", {}).values():
        for op in item.values():
            # Drop FastAPI's own 422 body: our validation errors are 400 bse_invalid_input.
            responses = op.get("responses", {})
            default = responses.get("422")
            if default is not None and not str(default.get("description", "")).startswith("Error: "):
                del responses["422"]
            for status, response in responses.items():
                response["headers"] = _response_headers(str(op.get("operationId")), str(status))
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    converted: dict[str, Any] = to_30(doc)
    converted["openapi"] = "3.0.3"
    return converted


_BUILT: dict[tuple[Any, ...], dict[str, Any]] = {}


def route_table(app: FastAPI) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """Each route's path (with its converters), methods and endpoint: what the document is built from."""
    table = []
    for ctx in iter_route_contexts(app.routes):
        endpoint = getattr(ctx, "endpoint", None)
        name = f"{getattr(endpoint, '__module__', '')}.{getattr(endpoint, '__qualname__', '')}"
        table.append((str(ctx.path), tuple(sorted(getattr(ctx, "methods", None) or ())), name))
    return tuple(table)


def app_spec(app: FastAPI) -> dict[str, Any]:
    """``build_openapi(app)``, built once per process for each distinct route table.

    Building takes a noticeable fraction of a second; every app of a process (tests
    start many) shares the result. Treat it as read-only.
    """
    key = (app.title, app.version, route_table(app))
    doc = _BUILT.get(key)
    if doc is None:
        doc = _BUILT[key] = build_openapi(app)
    return doc


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
