"""The response class every handler answers with: JSON rendered by orjson, bytes passed through.

A body that is already bytes (a replayed idempotent answer, an envelope rendered once) is
sent as it is, with no second encoding pass."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)
