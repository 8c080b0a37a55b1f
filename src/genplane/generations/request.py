"""Turns a raw create body into a checked, normalised request for one model.

Checks run in the order a client can act on: the body's shape and types
(``bse_invalid_input``, 400), then the model's own rules: fields it does not accept
(``bse_unsupported_parameter``) and values outside its lists
(``bse_parameter_out_of_range``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import ValidationError

from genplane.catalog.fields import SPECIFIC_FIELDS, GenerationBody
from genplane.catalog.loader import Catalog, ModelEntry
from genplane.catalog.pricing import generation_cost_millis, unit_price
from genplane.contract.errors import ApiError, invalid_input
from genplane.contract.spec import GenerationSpec
from genplane.net.addresses import is_public_address

MAX_BODY_BYTES = 100 * 1024


@dataclass(frozen=True, kw_only=True)
class GenerationRequest(GenerationSpec):
    """The checked spec plus what only admission needs: the model and the chain to try."""

    model: ModelEntry
    provider_order: list[str]
    provider_order_explicit: bool


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


def find_model(catalog: Catalog, model_identifier: str) -> ModelEntry:
    """The live model; a retired one is not found either, but the answer says it was retired."""
    model = catalog.models.get(model_identifier)
    retired = catalog.retired.get(model_identifier)
    if model is None and retired is not None:
        raise ApiError(
            "bse_model_not_found",
            retired.message(),
            details={
                "model_identifier": model_identifier,
                "retired_on": retired.retired_on.isoformat(),
                **({"successor": retired.successor} if retired.successor else {}),
            },
        )
    if model is None:
        raise ApiError(
            "bse_model_not_found",
            f"Unknown model '{model_identifier}'.",
            details={"model_identifier": model_identifier},
        )
    return model


@dataclass(frozen=True)
class OptionNames:
    """What the caller calls the video options: body fields on create, query parameters on
    estimate. Errors name the one the caller sent, so it can be found and fixed."""

    duration: str
    resolution: str
    audio: str


BODY_OPTIONS = OptionNames("generation_duration", "generation_resolution", "generation_generate_audio")
QUERY_OPTIONS = OptionNames("duration", "resolution", "audio")


@dataclass(frozen=True)
class VideoOptions:
    """A video's duration, resolution and audio, checked; all None for an image model."""

    duration: int | None = None
    resolution: str | None = None
    audio: bool | None = None  # None: the model has no audio option


def check_video_options(
    model: ModelEntry, names: OptionNames, duration: int | None, resolution: str | None, audio: bool | None
) -> VideoOptions:
    """One rule for create and estimate, so a value one refuses the other refuses alike."""
    schema = model.schema_
    if model.model_type != "video":
        for name, value in ((names.duration, duration), (names.resolution, resolution)):
            if value is not None:
                raise _unsupported(name, model)
        if audio:
            raise _unsupported(names.audio, model)
        return VideoOptions()
    if duration is None:
        raise invalid_input(names.duration, f"'{names.duration}' is required for video models.")
    if duration not in (schema.generation_duration or []):
        raise _out_of_range(names.duration, duration, schema.generation_duration)
    resolution = resolution or (schema.generation_resolution or [""])[0]
    if resolution not in (schema.generation_resolution or []):
        raise _out_of_range(names.resolution, resolution, schema.generation_resolution)
    if audio and not schema.generation_generate_audio:
        raise _unsupported(names.audio, model)
    return VideoOptions(duration, resolution, bool(audio) if schema.generation_generate_audio else None)


def check_generation(catalog: Catalog, media: str, model_identifier: str, raw: bytes) -> GenerationRequest:
    data = parse_json_object(raw)
    model = find_model(catalog, model_identifier)
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
    most = schema.generation_input_file_max
    if most is not None and len(body.generation_input_file or []) > most:
        count = len(body.generation_input_file or [])
        raise _out_of_range("generation_input_file", count, f"1..{most} images")
    for url in body.generation_input_file or []:
        _check_url("generation_input_file", url)
    if body.generation_input_file_last_content:
        _check_url("generation_input_file_last_content", body.generation_input_file_last_content)

    video = check_video_options(
        model,
        BODY_OPTIONS,
        body.generation_duration,
        body.generation_resolution,
        body.generation_generate_audio,
    )

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
        duration=video.duration,
        resolution=video.resolution,
        generate_audio=video.audio,
        specific={k: v for k, v in sent.items() if k in SPECIFIC_FIELDS},
    )


MAX_ESTIMATE_COUNT = 100


@dataclass(frozen=True)
class Estimate:
    """The price of ``count`` generations (or image outputs) of ``model`` with ``options``,
    by the pricing functions create reserves with."""

    model: ModelEntry
    count: int
    options: VideoOptions

    @property
    def unit_price(self) -> Decimal:
        return unit_price(self.model, self.options.resolution, bool(self.options.audio))

    @property
    def per_generation_millis(self) -> int:
        o = self.options
        audio = bool(o.audio)
        return generation_cost_millis(self.model, duration=o.duration, resolution=o.resolution, audio=audio)

    @property
    def total_millis(self) -> int:
        return self.per_generation_millis * self.count

    def affordable(self, balance_millis: int) -> int | None:
        """How many a balance pays for; None for a free model."""
        per = self.per_generation_millis
        return balance_millis // per if per else None


def check_estimate(
    catalog: Catalog,
    model_identifier: str,
    count: int,
    duration: int | None,
    resolution: str | None,
    audio: bool,
) -> Estimate:
    """The create checks on the options an estimate takes; a video's duration, which create
    requires, defaults to the model's first, and ``count`` is clamped to 1..MAX_ESTIMATE_COUNT."""
    model = find_model(catalog, model_identifier)
    if model.model_type == "video" and duration is None and model.schema_.generation_duration:
        duration = model.schema_.generation_duration[0]
    options = check_video_options(model, QUERY_OPTIONS, duration, resolution, audio)
    return Estimate(model, min(max(count, 1), MAX_ESTIMATE_COUNT), options)
