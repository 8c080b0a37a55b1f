"""Reading the response headers the contract defines: rate limits and ``Retry-After``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from genplane.client.models import RateLimit


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date.

    A date in the past means "now" (0); anything unreadable is ``None``, so the caller
    falls back to its own back-off rather than trusting garbage.

    >>> parse_retry_after("17")
    17.0
    >>> parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0)
    30.0
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less parse means the same
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """The ``X-RateLimit-*`` trio plus ``Retry-After``; ``None`` when the server sent none."""
    retry_after = parse_retry_after(headers.get("retry-after"))
    limit = _int(headers.get("x-ratelimit-limit"))
    if limit is None and retry_after is None:
        return None
    return RateLimit(
        limit=limit,
        remaining=_int(headers.get("x-ratelimit-remaining")),
        reset=_int(headers.get("x-ratelimit-reset")),
        retry_after=retry_after,
    )
