"""Turns a raw create body into a checked, normalised request for one model.

Checks run in the order a client can act on: the body's shape and types
(``bse_invalid_input``, 400), then the model's own rules: fields it does not accept
(``bse_unsupported_parameter``) and values outside its lists
(``bse_parameter_out_of_range``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import ValidationError

from genplane.catalog.fields import SPECIFIC_FIELDS, GenerationBody
from genplane.catalog.loader import Catalog, ModelEntry
from genplane.contract.errors import ApiError, invalid_input
from genplane.net.addresses import is_public_address

MAX_BODY_BYTES = 100 * 1024


@dataclass(frozen=True)
class GenerationRequest:
    model: ModelEntry
    prompt: str
    ratio: str
    output_format: str
    output_number: int
    provider_order: list[str]
    provider_order_explicit: bool
    input_file: list[str] | None = None
    input_file_last_content: str | None = None
    duration: int | None = None
    resolution: str | None = None
    generate_audio: bool | None = None
    specific: dict[str, Any] = field(default_factory=dict)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError("bse_payload_too_large")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_input("body", f"The body is not valid JSON: {exc.msg}.") from exc
    if not isinstance(data, dict):
        raise invalid_input("body", "The body must be a JSON object.")
    return data


def _shape_error(exc: ValidationError, model: ModelEntry) -> ApiError:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    name = loc[0] if loc else "body"
    if err["type"] == "extra_forbidden":
        # The contract: any field the model does not accept is bse_unsupported_parameter.
        return _unsupported(name, model)
    if err["type"] == "missing":
        return invalid_input(name, f"'{name}' is required.")
    where = ".".join(loc) or "body"
    return invalid_input(name, f"'{where}': {err['msg']}.")


def _check_url(field_name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(
            "bse_unsafe_file_url",
            f"{field_name} must be a public http(s) URL.",
            details={"field": field_name},
        )
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    if not is_public_address(ip):
        raise ApiError(
            "bse_unsafe_file_url",
            f"{field_name} points to a non-public address.",
            details={"field": field_name},
        )


def _out_of_range(field_name: str, value: object, allowed: object) -> ApiError:
    return ApiError(
        "bse_parameter_out_of_range",
        f"{field_name}={value!r} is not allowed for this model; allowed: {allowed}.",
        details={"field": field_name, "allowed": allowed},
    )


def _unsupported(field_name: str, model: ModelEntry) -> ApiError:
    return ApiError(
        "bse_unsupported_parameter",
        f"{model.model_identifier} does not accept '{field_name}'.",
        details={"field": field_name},
    )


def resolve_provider_order(model: ModelEntry, requested: str | None) -> list[str]:
    """An explicit chain is kept in order; 'fastest' (or nothing) starts from catalogue order."""
    if requested is None or requested.strip() == "fastest":
        return list(model.providers)
    chain = [p.strip() for p in requested.split(",") if p.strip()]
    if not chain:
        raise invalid_input("generation_provider_order", "generation_provider_order names no provider.")
    if len(set(chain)) != len(chain):
        raise invalid_input("generation_provider_order", "generation_provider_order repeats a provider.")
    for name in chain:
        if name not in model.providers:
            raise _out_of_range("generation_provider_order", name, ["fastest", *model.providers])
    return chain


def check_generation(catalog: Catalog, media: str, model_identifier: str, raw: bytes) -> GenerationRequest:
    data = parse_json_object(raw)
    model = catalog.models.get(model_identifier)
    if model is None:
        raise ApiError(
            "bse_model_not_found",
            f"Unknown model '{model_identifier}'.",
            details={"model_identifier": model_identifier},
        )
    try:
        body = GenerationBody.model_validate(data)
    except ValidationError as exc:
        raise _shape_error(exc, model) from exc
    if model.model_type != media:
        raise ApiError(
            "bse_model_type_mismatch",
            f"{model_identifier} generates {model.model_type}s; use /v1/generate/{model.model_type}/.",
        )
    schema = model.schema_
    sent = body.model_dump(exclude_none=True)

    accepted = {
        "generation_prompt",
        "generation_ratio",
        "generation_output_format",
        "generation_output_number",
        "generation_provider_order",
        *model.specific_schema,
    }
    if schema.generation_input_file:
        accepted.add("generation_input_file")
    if schema.generation_input_file_last_content:
        accepted.add("generation_input_file_last_content")
    if model.model_type == "video":
        accepted |= {"generation_duration", "generation_resolution"}
        if schema.generation_generate_audio:
            accepted.add("generation_generate_audio")
    for name in sent:
        if name not in accepted:
            raise _unsupported(name, model)

    ratio = body.generation_ratio or schema.generation_ratio[0]
    if ratio not in schema.generation_ratio:
        raise _out_of_range("generation_ratio", ratio, schema.generation_ratio)
    fmt = body.generation_output_format or schema.generation_output_format[0]
    if fmt not in schema.generation_output_format:
        raise _out_of_range("generation_output_format", fmt, schema.generation_output_format)
    number = body.generation_output_number or 1
    if number > schema.generation_output_number:
        raise _out_of_range("generation_output_number", number, f"1..{schema.generation_output_number}")
    if schema.generation_input_file_required and not body.generation_input_file:
        message = f"{model.model_identifier} needs an input image in 'generation_input_file'."
        raise invalid_input("generation_input_file", message)
    for url in body.generation_input_file or []:
        _check_url("generation_input_file", url)
    if body.generation_input_file_last_content:
        _check_url("generation_input_file_last_content", body.generation_input_file_last_content)

    duration = resolution = audio = None
    if model.model_type == "video":
        if body.generation_duration is None:
            raise invalid_input("generation_duration", "'generation_duration' is required for video models.")
        duration = body.generation_duration
        if duration not in (schema.generation_duration or []):
            raise _out_of_range("generation_duration", duration, schema.generation_duration)
        resolution = body.generation_resolution or (schema.generation_resolution or [""])[0]
        if resolution not in (schema.generation_resolution or []):
            raise _out_of_range("generation_resolution", resolution, schema.generation_resolution)
        audio = bool(body.generation_generate_audio) if schema.generation_generate_audio else None

    return GenerationRequest(
        model=model,
        prompt=body.generation_prompt,
        ratio=ratio,
        output_format=fmt,
        output_number=number,
        provider_order=resolve_provider_order(model, body.generation_provider_order),
        provider_order_explicit=(body.generation_provider_order or "fastest").strip() != "fastest",
        input_file=body.generation_input_file,
        input_file_last_content=body.generation_input_file_last_content,
        duration=duration,
        resolution=resolution,
        generate_audio=audio,
        specific={k: v for k, v in sent.items() if k in SPECIFIC_FIELDS},
    )
