"""Schemathesis hooks for tests/test_schemathesis.py: loaded by the `st run` it starts.

Left alone, Schemathesis would mostly send model identifiers and generation ids that do
not exist, and bodies no model accepts, so the create and content operations would answer
little but 404 and 422. These hooks mix real values into what it generates (Hypothesis
chooses, so the seed still fixes the run):

- model identifiers: random, or from the catalogue (estimate: any model; create: the models
  this deployment can run, the local ones, whatever the route's media type);
- create bodies: random, or bodies the route's local model accepts;
- generation ids: random, or ids of real generations, passed in by the test in
  ``GENPLANE_TEST_GENERATION_IDS`` (a JSON list).
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

from genplane.catalog.loader import load_catalog

CATALOG = load_catalog()
ALL_MODELS = sorted(CATALOG.models)
LOCAL_MODELS = sorted(m for m, entry in CATALOG.models.items() if "local" in entry.providers)
GENERATION_IDS: list[str] = json.loads(os.environ.get("GENPLANE_TEST_GENERATION_IDS", "[]"))


def _text(max_size: int = 60) -> st.SearchStrategy[str]:
    # Lone surrogates cannot be encoded as UTF-8, so no client can send them.
    return st.text(st.characters(codec="utf-8"), min_size=1, max_size=max_size)


def accepted_body(media: str) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies that ``local/preview-<media>`` accepts: its lists, its specific fields, optional ones."""
    model = CATALOG.models[f"local/preview-{media}"]
    schema = model.schema_
    required: dict[str, st.SearchStrategy[Any]] = {"generation_prompt": _text()}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "generation_ratio": st.sampled_from(schema.generation_ratio),
        "generation_output_format": st.sampled_from(schema.generation_output_format),
        "generation_output_number": st.integers(1, schema.generation_output_number),
        "generation_provider_order": st.sampled_from(["fastest", *model.providers]),
    }
    if "generation_seed" in model.specific_schema:
        optional["generation_seed"] = st.integers(0, 4_294_967_295)
    if "generation_negative_prompt" in model.specific_schema:
        optional["generation_negative_prompt"] = _text()
    if media == "video":
        required["generation_duration"] = st.sampled_from(schema.generation_duration or [])
        optional["generation_resolution"] = st.sampled_from(schema.generation_resolution or [])
        if schema.generation_generate_audio:
            optional["generation_generate_audio"] = st.booleans()
    return st.fixed_dictionaries(required, optional=optional)


@schemathesis.hook
def before_generate_path_parameters(context: Any, strategy: st.SearchStrategy[Any]) -> Any:
    operation = context.operation
    if operation is None:
        return strategy
    if "{model_identifier}" in operation.path:
        known = LOCAL_MODELS if operation.path.startswith("/v1/generate/") else ALL_MODELS
        return st.one_of(strategy, st.sampled_from(known).map(lambda m: {"model_identifier": m}))
    if "{generation_id}" in operation.path and GENERATION_IDS:
        return st.one_of(strategy, st.sampled_from(GENERATION_IDS).map(lambda g: {"generation_id": g}))
    return strategy


@schemathesis.hook
def before_generate_body(context: Any, strategy: st.SearchStrategy[Any]) -> Any:
    operation = context.operation
    if operation is None or not operation.path.startswith("/v1/generate/"):
        return strategy
    media = "video" if operation.path.startswith("/v1/generate/video/") else "image"
    return st.one_of(strategy, accepted_body(media))
