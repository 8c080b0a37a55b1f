"""Multipart form values, for the endpoints that take no JSON (image edits, FLUX.2 on Workers AI).

A form field is text: booleans are spelt the way the JSON the same servers accept
elsewhere spells them, not Python's ``True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def form_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """A JSON body's fields as form fields; one without a value is left out, since a form has no null."""
    return {name: form_value(value) for name, value in fields.items() if value is not None}
