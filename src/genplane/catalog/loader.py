"""Loads and checks the catalogue data files once, at start-up.

A broken catalogue is an operator error that should stop the process with a clear
message, not surface later as a 500 on one request, so every cross-reference is
checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genplane.catalog.fields import SPECIFIC_FIELDS

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


class ModelEntry(_Strict):
    model_identifier: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")
    model_type: Literal["image", "video"]
    model_pricing: float | dict[str, float]
    schema_: ModelSchema = Field(alias="schema")
    specific_schema: list[str] = []
    providers: dict[str, ProviderBinding]

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
        if not s.generation_ratio or not s.generation_output_format:
            raise ValueError("a model lists at least one ratio and one output format")
        return self


class Catalog:
    def __init__(self, providers: list[ProviderInfo], models: list[ModelEntry]) -> None:
        self.providers = {p.provider_id: p for p in providers}
        self.models = {m.model_identifier: m for m in models}
        for m in models:
            unknown = set(m.providers) - set(self.providers)
            if unknown:
                raise ValueError(f"{m.model_identifier}: unknown providers {sorted(unknown)}")

    def models_of_provider(self, provider_id: str) -> list[ModelEntry]:
        return [m for m in self.models.values() if provider_id in m.providers]


def _read(path: Path, key: str) -> list[dict[str, object]]:
    data = yaml.safe_load(path.read_text()) or {}
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ValueError(f"{path}: '{key}' must be a list")
    return items


def load_catalog(extra_dir: Path | None = None) -> Catalog:
    """Read the packaged catalogue plus any ``*.yaml`` files of ``extra_dir`` (same format)."""
    files = sorted(DATA_DIR.glob("*.yaml"))
    if extra_dir is not None:
        files += sorted(Path(extra_dir).glob("*.yaml"))
    providers: list[ProviderInfo] = []
    models: list[ModelEntry] = []
    for path in files:
        try:
            providers += [ProviderInfo.model_validate(p) for p in _read(path, "providers")]
            models += [ModelEntry.model_validate(m) for m in _read(path, "models")]
        except ValidationError as exc:
            raise ValueError(f"catalogue file {path.name} is invalid:\n{exc}") from exc
    return Catalog(providers, models)
