"""The one shape of a stored file's key: ``<generation_id>/<token>/<index>.<ext>``.

The store writes keys only in this shape and serves nothing else, so a key taken from a
URL is checked against it before storage is touched: anything else (``..``, NUL bytes,
backslashes, empty segments, overlong keys, the health probe's folder) is simply not a
file, never a storage error. The generation id in front is what lets cancel, failure and
the sweep find every file of one generation under its prefix.
"""

from __future__ import annotations

import re
import secrets

TOKEN_BYTES = 24  # secrets.token_urlsafe(24): 32 URL-safe characters, 192 random bits
GENERATION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_KEY = re.compile(
    rf"(?P<generation_id>{GENERATION_ID.pattern})/[A-Za-z0-9_-]{{32}}/(?:0|[1-9][0-9]{{0,2}})\.[a-z0-9]{{1,8}}"
)
MAX_KEY_LENGTH = 36 + 1 + 32 + 1 + 3 + 1 + 8


def is_generation_id(value: str) -> bool:
    return GENERATION_ID.fullmatch(value) is not None


def is_file_key(key: str) -> bool:
    return len(key) <= MAX_KEY_LENGTH and _KEY.fullmatch(key) is not None


def new_file_key(generation_id: str, index: int, ext: str) -> str:
    """A fresh key for one output; ``ValueError`` when the parts cannot make a servable key."""
    key = f"{generation_id}/{secrets.token_urlsafe(TOKEN_BYTES)}/{index}.{ext}"
    if not is_file_key(key):
        raise ValueError(f"no valid file key from {generation_id!r}, {index!r}, {ext!r}")
    return key
