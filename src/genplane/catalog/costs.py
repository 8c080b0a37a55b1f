"""What a provider bills for one request through one binding, in the provider's own unit.

A model's price is what a tenant pays; a binding's cost is what the deployment pays the
provider for the same request. The two are kept side by side in the catalogue so that the
loader can refuse a binding that costs more than the price (see
:func:`genplane.catalog.loader.check_margins`) and routing can skip one that would lose
money on a given request. Providers do not all bill per output or per second: Cloudflare
bills 512x512 tiles and steps, FLUX.2 bills megapixels (inputs included), Seedance bills
video tokens. Each shape is computed here exactly (``Decimal``), from the sizes the
adapters actually ask for, which the catalogue states (``output_sizes``) and a test keeps
equal to the adapters' own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: FLUX.2 counts megapixels of 1024 x 1024 pixels, each image rounded up separately.
MEGAPIXEL = 1024 * 1024
#: Seedance counts a video token per 1024 pixels of each frame.
PIXELS_PER_VIDEO_TOKEN = 1024


def dec(value: float | int | str) -> Decimal:
    """A catalogue number as the decimal it was written as (0.007 stays 0.007, not 0.00699...)."""
    return Decimal(str(value))


@dataclass(frozen=True)
class CostRequest:
    """The parts of a request that a price or a cost can depend on."""

    ratio: str
    outputs: int = 1
    duration: int | None = None
    resolution: str | None = None
    audio: bool = False
    inputs: int = 0  # input images sent with the request


class BindingCost(BaseModel):
    """A provider's bill for one binding, with where it was read and when.

    Exactly one unit is given: ``per_output`` (images), ``per_second`` (video, keyed like
    ``model_pricing``: ``720p``, ``720p_audio``), ``per_tile`` (+ ``per_step``),
    ``per_megapixel`` (+ ``per_extra_megapixel``) or ``per_million_tokens`` (video tokens).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(pattern=r"^https://")
    checked: date
    note: str | None = None

    per_output: float | None = Field(None, ge=0)
    per_second: dict[str, float] | None = None
    # The provider makes audio whatever is asked, and bills every second at the audio rate.
    always_audio: bool = False

    per_tile: float | None = Field(None, ge=0)
    tile_side: int = Field(512, ge=1)
    per_step: float = Field(0, ge=0)
    steps: int | None = Field(None, ge=1)  # the steps every request runs (sent or the provider's default)

    per_megapixel: float | None = Field(None, ge=0)  # the output's first megapixel
    per_extra_megapixel: float | None = Field(None, ge=0)  # each further output and each input megapixel
    input_megapixels: int = Field(1, ge=1)  # what one input image is billed as

    per_million_tokens: float | None = Field(None, ge=0)
    fps: int | None = Field(None, ge=1)
    frame_pixels: dict[str, int] | None = None  # by resolution: the largest frame of any ratio

    # "W:H" -> "WIDTHxHEIGHT": the size the adapter asks for (tile and megapixel units).
    output_sizes: dict[str, str] | None = None

    @property
    def unit(self) -> Literal["per_output", "per_second", "per_tile", "per_megapixel", "per_million_tokens"]:
        for name in ("per_output", "per_second", "per_tile", "per_megapixel", "per_million_tokens"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated: one unit is set")

    @model_validator(mode="after")
    def _one_unit(self) -> BindingCost:
        units = [
            n
            for n in ("per_output", "per_second", "per_tile", "per_megapixel", "per_million_tokens")
            if getattr(self, n) is not None
        ]
        if len(units) != 1:
            raise ValueError(f"a cost gives exactly one unit, not {units or 'none'}")
        unit = units[0]
        if unit in ("per_tile", "per_megapixel") and not self.output_sizes:
            raise ValueError(f"a {unit} cost lists the output_sizes the adapter asks for")
        if unit == "per_tile" and self.per_step and self.steps is None:
            raise ValueError("a per_step cost says how many steps a request runs (steps)")
        if unit == "per_megapixel" and self.per_extra_megapixel is None:
            raise ValueError("a per_megapixel cost gives per_extra_megapixel too")
        if unit == "per_million_tokens" and (self.fps is None or not self.frame_pixels):
            raise ValueError("a per_million_tokens cost gives fps and frame_pixels")
        for size in (self.output_sizes or {}).values():
            _pixels(size)
        return self


def _pixels(size: str) -> tuple[int, int]:
    width, sep, height = size.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"output size {size!r} is not WIDTHxHEIGHT")
    return int(width), int(height)


class CostUnknown(ValueError):
    """The cost cannot be computed for this request (a size or a rate the catalogue lacks)."""


def cost_of(cost: BindingCost, request: CostRequest) -> Decimal:
    """What the provider bills for ``request`` (all its outputs), exactly."""
    per_output = _one_output(cost, request)
    return per_output * request.outputs


def _one_output(cost: BindingCost, request: CostRequest) -> Decimal:
    seconds = request.duration or 0
    if cost.per_output is not None:
        return dec(cost.per_output)
    if cost.per_second is not None:
        key = request.resolution or ""
        if request.audio or cost.always_audio:
            key += "_audio"
        if key not in cost.per_second:
            raise CostUnknown(f"the cost has no rate for {key!r}")
        return dec(cost.per_second[key]) * seconds
    if cost.per_million_tokens is not None:
        assert cost.frame_pixels is not None and cost.fps is not None
        frame = cost.frame_pixels.get(request.resolution or "")
        if frame is None:
            raise CostUnknown(f"the cost has no frame size for {request.resolution!r}")
        tokens = Decimal(frame * cost.fps * seconds) / PIXELS_PER_VIDEO_TOKEN
        return tokens * dec(cost.per_million_tokens) / 1_000_000
    size = (cost.output_sizes or {}).get(request.ratio)
    if size is None:
        raise CostUnknown(f"the cost has no output size for ratio {request.ratio!r}")
    width, height = _pixels(size)
    if cost.per_tile is not None:
        tiles = math.ceil(width / cost.tile_side) * math.ceil(height / cost.tile_side)
        return dec(cost.per_tile) * tiles + dec(cost.per_step) * (cost.steps or 0)
    assert cost.per_megapixel is not None and cost.per_extra_megapixel is not None
    output_mp = math.ceil(width * height / MEGAPIXEL)
    extra = (output_mp - 1) + request.inputs * cost.input_megapixels
    return dec(cost.per_megapixel) + dec(cost.per_extra_megapixel) * extra
