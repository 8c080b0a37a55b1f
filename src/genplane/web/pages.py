"""The browser pages: the Playground, the model pages and the usage dashboard.

They are a convenience served next to the API, not part of the ``/v1`` contract: none is
in the OpenAPI document, and the firewall passes them (GET only) as it passes ``/docs``.
The Playground and the dashboard hold no data of their own: their scripts call the public
``/v1`` operations from the browser with the key the user pastes, which stays in the tab's
``sessionStorage`` and never reaches these handlers. The model pages are rendered here from
the catalogue and the providers' shared health, which a tenant may see without a key.

Every page carries a strict Content-Security-Policy: scripts and styles from this origin
only, none inline, so a value that slipped through escaping still could not run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse, Response

from genplane.catalog.fields import GenerationBody
from genplane.catalog.loader import Catalog, ModelEntry
from genplane.db.engine import Database
from genplane.providers.base import ProviderAdapter
from genplane.providers.health import provider_health
from genplane.settings import Settings
from genplane.web.examples import build_examples

#: The pages' own paths; the firewall passes exactly these (and the prefixes below) on GET/HEAD.
PAGE_PATHS = frozenset({"/", "/playground", "/models", "/dashboard"})
PAGE_PREFIXES = ("/models/", "/static/")

#: The static files, by name; nothing else under /static/ exists, so no path is ever resolved.
_STATIC_TYPES = {
    "app.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "models.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: The create body's fields as JSON schema: descriptions and bounds of the model-specific ones.
_BODY_FIELDS: dict[str, dict[str, Any]] = GenerationBody.model_json_schema()["properties"]

#: provider id -> live state (healthy, recovering, degraded, or unknown when not configured here).
ProviderStates = Callable[[], Awaitable[dict[str, str]]]


async def live_provider_states(
    db: Database, catalog: Catalog, adapters: dict[str, ProviderAdapter]
) -> dict[str, str]:
    """Each catalogue provider's shared state, as ``/v1/health/inference/providers`` reports it.

    The same service call as the operation, so the page and the API never disagree. That call
    also counts one account's own attempts; no account is asking here, so it is given an id no
    account has and those counts (all zero) are not shown.
    """
    configured = {pid for pid, adapter in adapters.items() if adapter.configured()}
    report = await provider_health(db, list(catalog.providers), "", configured)
    return {p.provider: str(p.state) for p in report.providers}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _load_static() -> dict[str, StaticFile]:
    """Read once at start-up from the installed package (the wheel ships them)."""
    root = resources.files("genplane.web") / "static"
    files = {}
    for name, content_type in _STATIC_TYPES.items():
        body = (root / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[name] = StaticFile(body, content_type, etag)
    return files


def content_security_policy(settings: Settings) -> str:
    """Self only. Output files are served at the public base URL, which may name another origin
    than the one the browser came in by (a proxy, ``localhost`` vs ``127.0.0.1``); with
    presigned S3 downloads they are redirected to the bucket's host, over https."""
    media = ["'self'", "blob:"]
    public = urlsplit(settings.public_base_url)
    if public.scheme in ("http", "https") and public.netloc:
        media.append(f"{public.scheme}://{public.netloc}")
    if settings.storage_presign_seconds > 0:
        media.append("https:")
    sources = " ".join(media)
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {sources} data:; media-src {sources}; font-src 'self'; manifest-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


def _security_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


def _field_rows(model: ModelEntry) -> list[dict[str, str]]:
    """The create body's fields this model accepts: allowed values and the default applied."""
    s = model.schema_
    rows = [
        {"name": "generation_prompt", "allowed": "text, 1 to 5000 characters", "default": "(required)"},
        {
            "name": "generation_ratio",
            "allowed": ", ".join(s.generation_ratio),
            "default": s.generation_ratio[0],
        },
        {
            "name": "generation_output_format",
            "allowed": ", ".join(s.generation_output_format),
            "default": s.generation_output_format[0],
        },
        {
            "name": "generation_output_number",
            "allowed": f"1 to {s.generation_output_number}",
            "default": "1",
        },
    ]
    if s.generation_input_file:
        rows.append(
            {
                "name": "generation_input_file",
                "allowed": "list of public http(s) URLs of JPEG, PNG or WebP images",
                "default": "(required)" if s.generation_input_file_required else "none",
            }
        )
    if s.generation_input_file_last_content:
        rows.append(
            {
                "name": "generation_input_file_last_content",
                "allowed": "public http(s) URL of the end-frame image",
                "default": "none",
            }
        )
    if model.model_type == "video":
        durations = s.generation_duration or []
        resolutions = s.generation_resolution or []
        rows.append(
            {
                "name": "generation_duration",
                "allowed": ", ".join(f"{d} s" for d in durations),
                "default": "(required)",
            }
        )
        rows.append(
            {"name": "generation_resolution", "allowed": ", ".join(resolutions), "default": resolutions[0]}
        )
        if s.generation_generate_audio:
            rows.append({"name": "generation_generate_audio", "allowed": "true, false", "default": "false"})
    rows.append(
        {
            "name": "generation_provider_order",
            "allowed": "fastest, or a comma-separated chain of: " + ", ".join(model.providers),
            "default": "fastest",
        }
    )
    for name in model.specific_schema:
        description = str(_BODY_FIELDS[name].get("description", "")).removeprefix("Model-specific: ")
        rows.append(
            {
                "name": name,
                "allowed": description.rstrip(".") + _bounds(_BODY_FIELDS[name]),
                "default": "none (model-specific)",
            }
        )
    return rows


def _bounds(schema: dict[str, Any]) -> str:
    """The bounds of an optional field's JSON schema (the non-null branch of its anyOf)."""
    for branch in schema.get("anyOf", [schema]):
        if "maxLength" in branch:
            return f", at most {branch['maxLength']} characters"
        if "minimum" in branch and "maximum" in branch:
            return f", {branch['minimum']} to {branch['maximum']}"
    return ""


def _price(value: float) -> str:
    return f"{value:g}"


def _pricing_rows(model: ModelEntry) -> list[dict[str, str]]:
    pricing = model.model_pricing
    if not isinstance(pricing, dict):
        unit = "per output image" if model.model_type == "image" else "per second"
        return [{"option": unit, "price": _price(pricing)}]
    rows = []
    schema = model.schema_
    for resolution in schema.generation_resolution or []:
        rows.append({"option": f"{resolution}, per second", "price": _price(pricing[resolution])})
        if schema.generation_generate_audio:
            audio = pricing[f"{resolution}_audio"]
            rows.append({"option": f"{resolution} with audio, per second", "price": _price(audio)})
    return rows


def pricing_summary(model: ModelEntry) -> str:
    pricing = model.model_pricing
    if isinstance(pricing, dict):
        low, high = min(pricing.values()), max(pricing.values())
        span = _price(low) if low == high else f"{_price(low)} to {_price(high)}"
        return f"{span} per second"
    return f"{_price(pricing)} per {'image' if model.model_type == 'image' else 'second'}"


def pages_router(catalog: Catalog, settings: Settings, provider_states: ProviderStates) -> APIRouter:
    """The pages and their static files; ``provider_states`` reads the providers' shared health."""
    router = APIRouter(include_in_schema=False)
    env = Environment(
        loader=PackageLoader("genplane.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    static = _load_static()
    headers = _security_headers(content_security_policy(settings))
    base_url = settings.public_base_url.rstrip("/")

    def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status_code, headers=headers)

    def providers_of(model: ModelEntry, states: dict[str, str]) -> list[dict[str, str]]:
        rows = []
        for pid in model.providers:
            info = catalog.providers[pid]
            rows.append({"id": pid, "name": info.provider_name, "state": states.get(pid, "unknown")})
        return rows

    @router.get("/")
    @router.get("/playground")
    async def playground() -> HTMLResponse:
        return render("playground.html", page="playground", title="Playground")

    @router.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        return render("dashboard.html", page="dashboard", title="Dashboard")

    @router.get("/models")
    async def models() -> HTMLResponse:
        states = await provider_states()
        rows = [
            {
                "identifier": m.model_identifier,
                "type": m.model_type,
                "pricing": pricing_summary(m),
                "providers": providers_of(m, states),
            }
            for m in catalog.models.values()
        ]
        return render("models.html", page="models", title="Models", models=rows)

    @router.get("/models/{model_identifier:path}")
    async def model_page(model_identifier: str) -> HTMLResponse:
        model = catalog.models.get(model_identifier)
        if model is None:
            return render(
                "not_found.html", status_code=404, page="models", title="Model not found",
                identifier=model_identifier[:200],
            )
        states = await provider_states()
        return render(
            "model.html",
            page="models",
            title=model.model_identifier,
            model=model,
            fields=_field_rows(model),
            price=pricing_summary(model),
            pricing=_pricing_rows(model),
            providers=providers_of(model, states),
            examples=build_examples(model, base_url),
        )

    @router.get("/static/{name}")
    async def static_file(name: str, request: Request) -> Response:
        found = static.get(name)
        if found is None:
            return Response("Not found\n", status_code=404, media_type="text/plain", headers=headers)
        file_headers = {
            "ETag": found.etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=file_headers)
        return Response(found.body, media_type=found.content_type, headers=file_headers)

    return router
