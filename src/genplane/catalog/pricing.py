"""Prices in milli-credits; the create path and the estimate operation both call these."""

from __future__ import annotations

from genplane.catalog.loader import ModelEntry
from genplane.credits.ledger import to_millis
from genplane.errors import ApiError


def unit_price_millis(model: ModelEntry, resolution: str | None = None, audio: bool = False) -> int:
    """Price of one output image, or of one second of video at ``resolution`` (with audio)."""
    pricing = model.model_pricing
    if isinstance(pricing, int | float):
        return to_millis(pricing)
    res = resolution or (model.schema_.generation_resolution or [""])[0]
    key = f"{res}_audio" if audio else res
    if key not in pricing:
        raise ApiError("bse_model_not_configured", f"{model.model_identifier} has no price for {key}.")
    return to_millis(pricing[key])


def generation_cost_millis(
    model: ModelEntry,
    *,
    outputs: int = 1,
    duration: int | None = None,
    resolution: str | None = None,
    audio: bool = False,
) -> int:
    unit = unit_price_millis(model, resolution, audio)
    if model.model_type == "video":
        return unit * (duration or 0) * outputs
    return unit * outputs
