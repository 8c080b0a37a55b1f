"""Credits on the wire are decimal (three places); in the database, integer milli-credits.

Integers make every sum exact; the conversion happens only at the edges.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MILLIS_PER_CREDIT = 1000


def to_millis(credits: Decimal | float | str) -> int:
    return int((Decimal(str(credits)) * MILLIS_PER_CREDIT).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_credits(millis: int) -> float:
    """Three-decimal credits for the wire (a JSON number, as the contract shows)."""
    return round(millis / MILLIS_PER_CREDIT, 3)
