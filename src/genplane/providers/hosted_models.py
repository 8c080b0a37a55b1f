"""The input of a model on a platform that hosts many makers' models (Replicate, fal).

Such a platform passes one flat object of named fields to whatever model runs, and its
models follow the same conventions: ``prompt``, ``seed``, ``negative_prompt``,
``resolution`` and ``generate_audio`` under those names, input images as URLs (a list
where the field is plural), a count of outputs only where the model makes several per
call. Only the platform's customary names for a few fields differ, and how it spells a
ratio, a format and a duration, which each adapter adds itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genplane.providers.base import ProviderJob


@dataclass(frozen=True)
class CustomaryNames:
    """A platform's usual parameter names, sent where the catalogue names none for the model."""

    output_number: str
    image_input: str  # the input images of an image model
    frame_input: str  # the start frame of a video model
    last_frame: str
    list_inputs: frozenset[str]  # image fields that take a list though their name is not plural


def one_call_per_output(job: ProviderJob, names: CustomaryNames) -> bool:
    """Whether the model has no count parameter (the catalogue names it ``""``): one call per output."""
    return job.output_number > 1 and job.name("generation_output_number", names.output_number) == ""


def model_input(job: ProviderJob, names: CustomaryNames, index: int, per_call: bool) -> dict[str, Any]:
    """The fields all the platform's models take alike, for the ``index``-th call.

    A field the catalogue maps to ``""`` is one this model lacks, and is left out.
    """
    body: dict[str, Any] = {}
    job.put(body, "generation_prompt", "prompt", job.prompt)
    if job.model_type == "image" and not per_call and job.output_number > 1:
        job.put(body, "generation_output_number", names.output_number, job.output_number)
    seed = job.seed
    job.put(body, "generation_seed", "seed", None if seed is None else seed + index)
    negative = job.specific.get("generation_negative_prompt")
    job.put(body, "generation_negative_prompt", "negative_prompt", negative)
    default_image = names.frame_input if job.model_type == "video" else names.image_input
    image_name = job.name("generation_input_file", default_image)
    if job.inputs and image_name:
        urls = [image.url for image in job.inputs]
        body[image_name] = urls if image_name in names.list_inputs or image_name.endswith("s") else urls[0]
    if job.model_type == "video":
        job.put(body, "generation_resolution", "resolution", job.resolution)
        job.put(body, "generation_generate_audio", "generate_audio", job.generate_audio)
        if job.last_frame is not None:
            job.put(body, "generation_input_file_last_content", names.last_frame, job.last_frame.url)
    return body
