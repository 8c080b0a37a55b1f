"""What a generation asks for, as one value shared by every layer that carries it.

The request check produces it, the ``generations`` row stores its fields under the same
names, and the provider job is built from it, so a new generation field is added here
(plus its column and migration) and flows through unchanged; nothing copies the fields
by hand from one shape to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, kw_only=True)
class GenerationSpec:
    """The normalized request: defaults applied, values checked against the model."""

    prompt: str
    ratio: str
    output_format: str
    output_number: int
    input_file: list[str] | None = None
    input_file_last_content: str | None = None
    duration: int | None = None
    resolution: str | None = None
    generate_audio: bool | None = None
    specific: dict[str, Any] = field(default_factory=dict)

    def spec_values(self) -> dict[str, Any]:
        """The spec's own fields (not a subclass's), by name: the row's columns of the same names."""
        return {f.name: getattr(self, f.name) for f in SPEC_FIELDS}


SPEC_FIELDS = fields(GenerationSpec)
