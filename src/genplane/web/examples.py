"""Ready-to-copy client examples, generated from one catalogue entry.

They are built from the catalogue rather than written by hand so that a model added to a
data file gets correct examples at once, and a value an example sends is always one the
model accepts (the first of each list: the model's default). Only what a model requires or
what shows its shape is sent: the prompt, the ratio, a video's duration and resolution, and
an input image where the model cannot run without one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from genplane.catalog.loader import ModelEntry

PROMPT = "A lighthouse on a cliff at dusk, waves below"
#: A placeholder, never fetched: the reader replaces it with an image of their own.
INPUT_FILE = "https://example.com/input.png"


@dataclass(frozen=True)
class Examples:
    curl: str
    python: str
    typescript: str


def example_body(model: ModelEntry) -> dict[str, Any]:
    """A create body the model accepts, in the contract's field order."""
    schema = model.schema_
    body: dict[str, Any] = {"generation_prompt": PROMPT, "generation_ratio": schema.generation_ratio[0]}
    if schema.generation_input_file_required:
        body["generation_input_file"] = [INPUT_FILE]
    if model.model_type == "video":
        # The TypeScript SDK routes a request to the video operation by generation_duration.
        assert schema.generation_duration and schema.generation_resolution  # the loader checks both
        body["generation_duration"] = schema.generation_duration[0]
        body["generation_resolution"] = schema.generation_resolution[0]
    return body


def _python_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return json.dumps(value)  # a valid Python string literal for any text
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_python_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _ts_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def _ts_literal(value: Any) -> str:
    if isinstance(value, str):
        return _ts_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_ts_literal(v) for v in value) + "]"
    return json.dumps(value)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def build_examples(model: ModelEntry, base_url: str) -> Examples:
    """curl, the Python SDK (``genplane.client``) and the TypeScript ``babysea`` SDK."""
    base = base_url.rstrip("/")
    body = example_body(model)
    ident = model.model_identifier
    curl = "\n".join(
        [
            f"curl -s {base}/v1/generate/{model.model_type}/{ident} \\",
            '  -H "Authorization: Bearer $GENPLANE_API_KEY" \\',
            '  -H "Content-Type: application/json" \\',
            '  -H "Prefer: wait=60" \\',
            f"  -d {_shell_quote(json.dumps(body))}",
        ]
    )
    python = "\n".join(
        [
            "from genplane.client import Client",
            "",
            f'client = Client(api_key="bye_...", base_url={json.dumps(base)})',
            f"generation = client.generate_and_wait({json.dumps(ident)}, {_python_literal(body)})",
            'paths = client.download(generation, "out")',
        ]
    )
    fields = "\n".join(f"  {k}: {_ts_literal(v)}," for k, v in body.items())
    typescript = "\n".join(
        [
            "import { BabySea } from 'babysea';",
            "",
            "const client = new BabySea({",
            "  apiKey: process.env.BABYSEA_API_KEY!,",
            f"  baseUrl: {_ts_string(base)},",
            "});",
            f"const result = await client.generateAndWait({_ts_string(ident)}, {{",
            fields,
            "});",
            "console.log(result.data.generation_output_file);",
        ]
    )
    return Examples(curl=curl, python=python, typescript=typescript)
