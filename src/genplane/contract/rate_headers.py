"""The ``X-RateLimit-*`` headers of the contract, for answers and for refusals.

Clients (the official SDK among them) honour ``Retry-After`` only when ``X-RateLimit-Limit``
is present, so every refusal that says when to come back also names the limit that refused
it: otherwise a client told to wait 43 s retries after its own one-second back-off.
"""

from __future__ import annotations

import math
import time


def rate_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    """``reset``: when the window frees up, in seconds since the epoch."""
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }


def refusal_headers(limit: int, retry_after: int) -> dict[str, str]:
    """A refused request's headers: the limit, nothing remaining, and when to come back."""
    return {
        **rate_headers(limit, 0, math.ceil(time.time() + retry_after)),
        "Retry-After": str(retry_after),
    }
