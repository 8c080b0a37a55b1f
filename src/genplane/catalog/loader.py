"""Loads and checks the catalogue data files once, at start-up.

A broken catalogue is an operator error that should stop the process with a clear
message, not surface later as a 500 on one request, so every cross-reference is
checked here, and so is money: a binding whose provider cost exceeds the model's price
for some request the model allows is refused (unless it says ``loss_ok`` and why),
because every such request would be paid for by the deployment.

Bindings carry an optional ``retire_after`` date (the provider's announced shutdown);
past it the binding is gone, and a model with no binding left is *retired*: it leaves
the library and creates answer ``bse_model_not_found`` naming the retirement, while
generation records made before stay readable (they never consult the catalogue).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genplane.catalog.costs import BindingCost, CostRequest, CostUnknown, cost_of, dec
from genplane.catalog.fields import SPECIFIC_FIELDS
from genplane.clock import utcnow

#: How many input images a request may send when the model sets no lower limit
#: (the request body's own limit, catalog/fields.py).
MAX_INPUT_FILES = 16

DATA_DIR = Path(__file__).parent / "data"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Implementation(_Strict):
    """Values are the product's published enumerations, so SDK types keep matching."""

    delivery_method: Literal["webhook_with_polling", "synchronous", "polling"]
    cancel_method: Literal["prediction_cancel_api", "queue_cancel_api"] | None
    webhook_verification: Literal["hmac_sha256", "ed25519"] | None
    failover_strategy: Literal["sequential_provider_chain"] = "sequential_provider_chain"
    health_monitoring: Literal["circuit_breaker"] = "circuit_breaker"
    supported_media_types: list[Literal["image", "video"]]


class ProviderInfo(_Strict):
    provider_id: str
    provider_name: str
    provider_description: str
    provider_website: str
    provider_docs: str
    implementation: Implementation


class ModelSchema(_Strict):
    generation_prompt: bool = True
    generation_ratio: list[str]
    generation_output_format: list[str]
    generation_output_number: int = Field(ge=1, le=100)
    generation_input_file: bool = False
    generation_input_file_required: bool = False  # image-to-video models: no input, no video
    # At most this many input images (a provider billing input megapixels is priced for it).
    generation_input_file_max: int | None = Field(None, ge=1, le=MAX_INPUT_FILES)
    generation_input_file_last_content: bool = False
    generation_duration: list[int] | None = None
    generation_resolution: list[str] | None = None
    generation_generate_audio: bool | None = None


class ProviderBinding(_Strict):
    """How one provider serves one model: its native id and the unified->native mapping.

    ``params`` are fixed native parameters sent with every request; ``fields`` renames
    unified fields (``generation_ratio: aspect_ratio``); ``values`` translates unified
    values per field (``generation_ratio: {"16:9": landscape_16_9}``). Adapters apply
    their protocol's usual names where the catalogue says nothing.
    """

    model_id: str
    # The native id to use when the request carries input files, for providers whose
    # image-to-image or image-to-video endpoint is another model than text-to-X.
    input_model_id: str | None = None
    params: dict[str, Any] = {}
    fields: dict[str, str] = {}
    values: dict[str, dict[str, Any]] = {}
    # What the provider bills for this binding, with its source and the date it was read.
    cost: BindingCost | None = None
    # Admit a binding that costs more than the price for some allowed requests (routing
    # still skips it for those); ``loss_reason`` says why the loss is accepted.
    loss_ok: bool = False
    loss_reason: str | None = None
    # The provider's announced shutdown: after this day the binding is gone.
    retire_after: dt.date | None = None
    # Where the binding's model id (and its shutdown date, if any) was read.
    source: str | None = Field(None, pattern=r"^https://")
    checked: dt.date | None = None

    @model_validator(mode="after")
    def _loss_has_reason(self) -> ProviderBinding:
        if self.loss_ok and not (self.loss_reason or "").strip():
            raise ValueError("loss_ok: true needs a loss_reason")
        return self

    def live_on(self, day: dt.date) -> bool:
        """False once ``retire_after`` has passed: the provider no longer serves the id."""
        return self.retire_after is None or day <= self.retire_after


class ModelEntry(_Strict):
    model_identifier: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")
    model_type: Literal["image", "video"]
    model_pricing: float | dict[str, float]
    schema_: ModelSchema = Field(alias="schema")
    specific_schema: list[str] = []
    providers: dict[str, ProviderBinding]
    # What the tenant gets where it is not obvious from the schema (e.g. audio always on).
    notes: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        s = self.schema_
        if self.model_type == "video":
            if not s.generation_duration or not s.generation_resolution:
                raise ValueError("a video model lists generation_duration and generation_resolution")
            if isinstance(self.model_pricing, dict):
                needed = set(s.generation_resolution)
                if s.generation_generate_audio:
                    needed |= {f"{r}_audio" for r in s.generation_resolution}
                missing = needed - set(self.model_pricing)
                if missing:
                    raise ValueError(f"model_pricing lacks {sorted(missing)}")
        elif s.generation_duration or s.generation_resolution or s.generation_generate_audio:
            raise ValueError("an image model has no duration, resolution or audio")
        if isinstance(self.model_pricing, dict) and self.model_type == "image":
            raise ValueError("image pricing is one number per output")
        unknown = set(self.specific_schema) - set(SPECIFIC_FIELDS)
        if unknown:
            raise ValueError(f"unknown specific_schema fields {sorted(unknown)}; known: {SPECIFIC_FIELDS}")
        if not self.providers:
            raise ValueError("a model needs at least one provider")
        if s.generation_input_file_required and not s.generation_input_file:
            raise ValueError("generation_input_file_required needs generation_input_file: true")
        if s.generation_input_file_max is not None and not s.generation_input_file:
            raise ValueError("generation_input_file_max needs generation_input_file: true")
        for provider, binding in self.providers.items():
            cost = binding.cost
            if cost is None:
                continue
            image_unit = cost.unit in ("per_output", "per_tile", "per_megapixel")
            if image_unit != (self.model_type == "image"):
                raise ValueError(f"{provider}: a {cost.unit} cost does not fit a {self.model_type} model")
            missing = set(s.generation_ratio) - set(cost.output_sizes or {}) if cost.output_sizes else set()
            if missing:
                raise ValueError(f"{provider}: cost.output_sizes lacks {sorted(missing)}")
        if not s.generation_ratio or not s.generation_output_format:
            raise ValueError("a model lists at least one ratio and one output format")
        return self


class RetiredModel(_Strict):
    """A model no provider serves any more: kept so its name is explained, not forgotten."""

    model_identifier: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")
    model_type: Literal["image", "video"]
    retired_on: dt.date
    reason: str
    successor: str | None = None
    source: str | None = Field(None, pattern=r"^https://")
    checked: dt.date | None = None

    def message(self) -> str:
        text = f"{self.model_identifier} was retired on {self.retired_on.isoformat()}: {self.reason}"
        if self.successor:
            text += f" Use {self.successor} instead."
        return text


def allowed_requests(model: ModelEntry) -> Iterator[CostRequest]:
    """One output of every request shape the model's schema admits, as far as money goes:
    each ratio, input count, duration, resolution and audio choice."""
    s = model.schema_
    if model.model_type == "image":
        most = (s.generation_input_file_max or MAX_INPUT_FILES) if s.generation_input_file else 0
        least = 1 if s.generation_input_file_required else 0
        for ratio in s.generation_ratio:
            for inputs in range(least, most + 1):
                yield CostRequest(ratio=ratio, inputs=inputs)
        return
    audio_choices = (False, True) if s.generation_generate_audio else (False,)
    for resolution in s.generation_resolution or []:
        for duration in s.generation_duration or []:
            for audio in audio_choices:
                yield CostRequest(
                    ratio=s.generation_ratio[0], duration=duration, resolution=resolution, audio=audio
                )


def price_of(model: ModelEntry, request: CostRequest) -> Decimal:
    """What the tenant pays for ``request`` (all its outputs), exactly (pricing.py rounds it)."""
    pricing = model.model_pricing
    if isinstance(pricing, int | float):
        unit = dec(pricing)
    else:
        key = f"{request.resolution}_audio" if request.audio else str(request.resolution)
        unit = dec(pricing[key])
    if model.model_type == "video":
        return unit * (request.duration or 0) * request.outputs
    return unit * request.outputs


@dataclass(frozen=True)
class Margin:
    """One binding's cost against the model's price for one allowed request."""

    model: str
    provider: str
    request: CostRequest
    price: Decimal
    cost: Decimal

    @property
    def loss(self) -> bool:
        return self.cost > self.price


def margins(model: ModelEntry, provider: str, binding: ProviderBinding) -> list[Margin]:
    """Cost and price of every allowed request through ``binding`` (none without a cost)."""
    if binding.cost is None:
        return []
    out = []
    for request in allowed_requests(model):
        try:
            cost = cost_of(binding.cost, request)
        except CostUnknown as exc:
            raise ValueError(f"{model.model_identifier} via {provider}: {exc}") from exc
        out.append(Margin(model.model_identifier, provider, request, price_of(model, request), cost))
    return out


def describe(request: CostRequest) -> str:
    parts = [f"ratio {request.ratio}"]
    if request.resolution:
        parts.append(f"{request.resolution}, {request.duration} s" + (", audio" if request.audio else ""))
    if request.inputs:
        parts.append(f"{request.inputs} input image{'s' if request.inputs > 1 else ''}")
    return ", ".join(parts)


def margin_violations(models: list[ModelEntry]) -> list[str]:
    """Every binding that costs more than its model's price for some allowed request and
    does not say ``loss_ok``: one line each, naming the worst request."""
    problems = []
    for model in models:
        for provider, binding in model.providers.items():
            losses = [m for m in margins(model, provider, binding) if m.loss]
            if losses and not binding.loss_ok:
                worst = max(losses, key=lambda m: m.cost - m.price)
                problems.append(
                    f"{model.model_identifier} via {provider} costs {worst.cost.normalize()} but is priced "
                    f"{worst.price.normalize()} ({describe(worst.request)}); raise the price, fix the "
                    "cost, or set loss_ok with a loss_reason"
                )
    return problems


def today_utc() -> dt.date:
    return utcnow().date()


class Catalog:
    """The models a deployment serves now, and the ones it no longer serves.

    ``models`` holds each live model with its live bindings only (past ``retire_after``
    they are dropped); ``retired`` the models declared retired and those left without a
    binding. ``declared`` keeps every model as written, for ``genplane catalog check``.
    """

    def __init__(
        self,
        providers: list[ProviderInfo],
        models: list[ModelEntry],
        retired: list[RetiredModel] | None = None,
        today: dt.date | None = None,
    ) -> None:
        day = today or today_utc()
        self.providers = {p.provider_id: p for p in providers}
        self.declared = {m.model_identifier: m for m in models}
        self.retired: dict[str, RetiredModel] = {r.model_identifier: r for r in retired or []}
        for m in models:
            unknown = set(m.providers) - set(self.providers)
            if unknown:
                raise ValueError(f"{m.model_identifier}: unknown providers {sorted(unknown)}")
            if m.model_identifier in self.retired:
                raise ValueError(f"{m.model_identifier} is both a model and a retired model")
        self.models: dict[str, ModelEntry] = {}
        for m in models:
            live = {p: b for p, b in m.providers.items() if b.live_on(day)}
            if live:
                self.models[m.model_identifier] = m if len(live) == len(m.providers) else m.model_copy(
                    update={"providers": live}
                )
                continue
            last = max(b.retire_after for b in m.providers.values() if b.retire_after is not None)
            self.retired[m.model_identifier] = RetiredModel(
                model_identifier=m.model_identifier,
                model_type=m.model_type,
                retired_on=last + dt.timedelta(days=1),
                reason="every provider serving it has shut it down.",
            )

    def models_of_provider(self, provider_id: str) -> list[ModelEntry]:
        return [m for m in self.models.values() if provider_id in m.providers]


def _read(path: Path, key: str) -> list[dict[str, object]]:
    data = yaml.safe_load(path.read_text()) or {}
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ValueError(f"{path}: '{key}' must be a list")
    return items


def load_catalog(
    extra_dir: Path | None = None, *, today: dt.date | None = None, strict: bool = True
) -> Catalog:
    """Read the packaged catalogue plus any ``*.yaml`` files of ``extra_dir`` (same format).

    ``strict`` (the server's way) refuses a catalogue with a binding that loses money on
    an allowed request; ``genplane catalog check`` reads it without, to list them all.
    """
    files = sorted(DATA_DIR.glob("*.yaml"))
    if extra_dir is not None:
        files += sorted(Path(extra_dir).glob("*.yaml"))
    providers: list[ProviderInfo] = []
    models: list[ModelEntry] = []
    retired: list[RetiredModel] = []
    for path in files:
        try:
            providers += [ProviderInfo.model_validate(p) for p in _read(path, "providers")]
            models += [ModelEntry.model_validate(m) for m in _read(path, "models")]
            retired += [RetiredModel.model_validate(r) for r in _read(path, "retired_models")]
        except ValidationError as exc:
            raise ValueError(f"catalogue file {path.name} is invalid:\n{exc}") from exc
    catalog = Catalog(providers, models, retired, today)
    if strict:
        problems = margin_violations(list(catalog.models.values()))
        if problems:
            raise ValueError("the catalogue loses money:\n" + "\n".join(f"- {p}" for p in problems))
    return catalog
