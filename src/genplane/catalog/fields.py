"""The unified request fields: one declaration per field, shared by validation and the OpenAPI body.

Model-specific fields live here too (with their types and bounds); a catalogue entry
opts into them by name in ``specific_schema``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Url = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class GenerationBody(BaseModel):
    """The body of POST /v1/generate/{image|video}/{model}: strict types, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, title="GenerationRequest")

    generation_prompt: Annotated[str, StringConstraints(min_length=1, max_length=5000)] = Field(
        description="What to generate (1 to 5000 characters)."
    )
    generation_ratio: Annotated[str, StringConstraints(max_length=20)] | None = Field(
        None, description="Aspect ratio from the model's list, e.g. 16:9; the first listed is the default."
    )
    generation_output_format: Annotated[str, StringConstraints(max_length=10)] | None = Field(
        None, description="png, jpg or webp for images; mp4 for video."
    )
    generation_output_number: Annotated[int, Field(ge=1, le=100)] | None = Field(
        None, description="How many outputs, within the model's limit (default 1)."
    )
    generation_input_file: Annotated[list[Url], Field(max_length=16)] | None = Field(
        None, description="Public http(s) URLs of JPEG, PNG or WebP input images."
    )
    generation_input_file_last_content: Url | None = Field(None, description="Video: end-frame image URL.")
    generation_duration: Annotated[int, Field(ge=1, le=600)] | None = Field(
        None, description="Video length in seconds, from the model's list (required for video)."
    )
    generation_resolution: Annotated[str, StringConstraints(max_length=20)] | None = Field(
        None, description="e.g. 720p; the first listed is the default."
    )
    generation_generate_audio: bool | None = Field(None, description="Video: add an audio track.")
    generation_provider_order: Annotated[str, StringConstraints(min_length=1, max_length=300)] | None = Field(
        None, description="'fastest' or a comma-separated provider chain such as 'bfl, replicate, fal'."
    )
    # Model-specific fields (accepted only where the model's specific_schema names them).
    generation_seed: Annotated[int, Field(ge=0, le=4294967295)] | None = Field(
        None, description="Model-specific: random seed for reproducible output."
    )
    generation_negative_prompt: Annotated[str, StringConstraints(max_length=2000)] | None = Field(
        None, description="Model-specific: what to avoid."
    )
    generation_guidance_scale: Annotated[float, Field(ge=0, le=50)] | None = Field(
        None, description="Model-specific: prompt adherence."
    )
    generation_num_inference_steps: Annotated[int, Field(ge=1, le=200)] | None = Field(
        None, description="Model-specific: sampling steps."
    )


COMMON_FIELDS: tuple[str, ...] = (
    "generation_prompt",
    "generation_ratio",
    "generation_output_format",
    "generation_output_number",
    "generation_input_file",
    "generation_input_file_last_content",
    "generation_duration",
    "generation_resolution",
    "generation_generate_audio",
    "generation_provider_order",
)
SPECIFIC_FIELDS: tuple[str, ...] = tuple(f for f in GenerationBody.model_fields if f not in COMMON_FIELDS)
