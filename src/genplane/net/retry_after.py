"""The one reading of a ``Retry-After`` header, for providers, downloads and webhooks.

RFC 9110 §10.2.3 allows delta-seconds or an HTTP-date. Servers also send fractions
("0.5"), which are read as written; anything else — a negative number, ``inf``, an
exponent, words — is no advice at all (None) rather than "retry now", so a broken
header never makes a caller hammer the server. A date already past means "now" (0).
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime

from genplane.clock import as_utc, utcnow

_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # ASCII digits only, as the RFC says


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None when it gives no usable advice.

    ``now`` is when the answer arrived (default: the clock); an HTTP-date is counted
    from it. Callers cap the result: a server may ask for days.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime dates and "-0000" carry no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    reference = as_utc(now) if now is not None else utcnow()
    return max(0.0, (when - reference).total_seconds())
