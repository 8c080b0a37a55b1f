"""Headers the contract defines once, refused when a request repeats them.

Two ``Authorization`` headers let a blocked key through: one reader took the last, another
the first. Rather than make every reader pick the same copy, a request that carries any
of these more than once is answered ``400 bse_invalid_input`` first thing, so whatever
reads a header afterwards reads the only one there is.
"""

from __future__ import annotations

from collections.abc import Iterable

from genplane.contract.errors import ApiError

SINGLE_VALUED: dict[bytes, str] = {
    b"authorization": "Authorization",
    b"idempotency-key": "Idempotency-Key",
    b"content-type": "Content-Type",
    b"content-length": "Content-Length",
}


def first_repeated(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The display name of the first single-valued header that occurs twice, or None."""
    seen: set[bytes] = set()
    for name, _ in raw_headers:
        if name in SINGLE_VALUED:
            if name in seen:
                return SINGLE_VALUED[name]
            seen.add(name)
    return None


def repeated_header_error(header: str) -> ApiError:
    return ApiError(
        "bse_invalid_input",
        f"Header '{header}' may be sent only once.",
        details={"field": header, "header": header},
    )
