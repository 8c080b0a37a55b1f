"""HTTP ``Range`` requests for one byte range (RFC 9110 section 14).

Players seek in videos with single ranges; multipart answers to multi-range requests
are rarely used and easy to get wrong, so a ``Range`` this module does not take as one
satisfiable-or-not byte range is ignored and the whole file served, as the RFC allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ``bytes=first-last``, ``bytes=first-`` or ``bytes=-suffix``; at most 18 digits each, so
# the numbers stay machine-sized (no stored file comes near 10**18 bytes).
_SPEC = re.compile(r"bytes=(?:([0-9]{1,18})-([0-9]{1,18})?|-([0-9]{1,18}))", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


class Unsatisfiable(Exception):
    """A valid range that lies outside the file: 416 with ``Content-Range: bytes */size``."""


def byte_range(values: list[str], size: int) -> ByteRange | None:
    """The range to serve for the request's ``Range`` header values, None for the whole file.

    Raises :class:`Unsatisfiable` for a single well-formed range that selects no byte.
    """
    if len(values) != 1:
        return None
    match = _SPEC.fullmatch(values[0].strip())
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        n = int(suffix)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - n), size)
    start = int(first)
    if last is not None and int(last) < start:
        return None  # invalid: ignored, the whole file is served
    if start >= size:
        raise Unsatisfiable
    stop = size if last is None else min(int(last) + 1, size)
    return ByteRange(start, stop)
