"""Prices; the create path and the estimate operation both call these.

Catalogue prices are decimal credits (a video's per second, an image's per output).
A cost is computed exactly and rounded to milli-credits once, at the end: rounding a
per-second price of 0.0015 to 0.002 first would overcharge a two-second clip by a third.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from genplane.catalog.costs import CostRequest, cost_of
from genplane.catalog.loader import ModelEntry, ProviderBinding
from genplane.contract.errors import ApiError
from genplane.credits.money import to_millis


def unit_price(model: ModelEntry, resolution: str | None = None, audio: bool = False) -> Decimal:
    """Price of one output image, or of one second of video at ``resolution`` (with audio)."""
    pricing = model.model_pricing
    if isinstance(pricing, int | float):
        return Decimal(str(pricing))
    res = resolution or (model.schema_.generation_resolution or [""])[0]
    key = f"{res}_audio" if audio else res
    if key not in pricing:
        raise ApiError("bse_model_not_configured", f"{model.model_identifier} has no price for {key}.")
    return Decimal(str(pricing[key]))


def generation_cost_millis(
    model: ModelEntry,
    *,
    outputs: int = 1,
    duration: int | None = None,
    resolution: str | None = None,
    audio: bool = False,
) -> int:
    unit = unit_price(model, resolution, audio)
    if model.model_type == "video":
        return to_millis(unit * (duration or 0) * outputs)
    return to_millis(unit * outputs)


def delivered_cost_millis(
    model: ModelEntry,
    reserved_millis: int,
    *,
    asked: int,
    delivered: int,
    duration: int | None = None,
    resolution: str | None = None,
    audio: bool = False,
) -> int:
    """What a generation pays when its provider delivered ``delivered`` of the ``asked`` outputs.

    A tenant pays for what it got: the delivered share is priced by
    :func:`generation_cost_millis`, as the reservation was, so its rounding is the
    reservation's. A full delivery (or a larger one) pays the reservation, and no share exceeds
    it, whatever the catalogue says now: the reservation is all the tenant agreed to pay.
    """
    if delivered >= asked:
        return reserved_millis
    share = generation_cost_millis(
        model, outputs=delivered, duration=duration, resolution=resolution, audio=audio
    )
    return min(share, reserved_millis)


def binding_refusal(
    model: ModelEntry,
    provider: str,
    request: CostRequest,
    reserved_millis: int,
    today: dt.date,
) -> str | None:
    """Why routing must not send ``request`` to ``provider`` (None: it may).

    A binding past its ``retire_after`` is gone; one whose provider bills more for this
    request than the tenant's reservation would be paid for by the deployment (the loader
    only admits such a binding with ``loss_ok``, for the requests where it does not lose).
    """
    binding: ProviderBinding | None = model.providers.get(provider)
    if binding is None:
        return None
    if not binding.live_on(today):
        return f"{provider} stopped serving {model.model_identifier} after {binding.retire_after}."
    if binding.cost is None:
        return None
    cost = cost_of(binding.cost, request)
    if cost * 1000 > reserved_millis:
        return f"{provider} would cost more than this request's price."
    return None
