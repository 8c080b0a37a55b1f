"""When to try a request again, and how long to wait first.

Both clients ask the same :class:`RetryPolicy`, so a sync and an async program retry
exactly alike; only how they sleep differs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from genplane.client.errors import IDEMPOTENCY_IN_PROGRESS, GenplaneError, NetworkError

#: 4xx answers that say "not now" rather than "not this": the request was not acted on.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential back-off that defers to the server's ``Retry-After``.

    ``max_retries`` counts the retries after the first attempt. A ``Retry-After`` longer
    than ``max_retry_after`` is not waited out: the error is raised at once so the
    caller decides (a firewall block lasts minutes; hanging a request that long is
    worse than failing it).
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**(attempt-1))].

        Spreading retries over the whole window keeps many clients that failed together
        from hammering the server together again."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(0, attempt - 1))
        return self.random() * ceiling

    def should_retry(self, error: GenplaneError, attempt: int, *, replayable: bool) -> bool:
        """Whether attempt number ``attempt`` (1-based) may be followed by another.

        ``replayable`` is true for methods without side effects and for POSTs carrying
        an Idempotency-Key: only those may be sent twice. A 4xx is final except 408, 429
        and ``bse_idempotency_in_progress`` (the first request with that key is still
        running); any other answer is retried only when the server marked it retryable."""
        if attempt > self.max_retries or not replayable:
            return False
        if isinstance(error, NetworkError) or error.status is None:
            return True
        if not error.retryable:
            return False
        in_progress = error.status == 409 and error.code == IDEMPOTENCY_IN_PROGRESS
        if not (error.status >= 500 or error.status in RETRYABLE_CLIENT_STATUSES or in_progress):
            return False
        asked = self.server_delay(error)
        return asked is None or asked <= self.max_retry_after

    @staticmethod
    def server_delay(error: GenplaneError) -> float | None:
        """What the server asked for: ``Retry-After``, else ``details.retry_after_seconds``."""
        if error.rate_limit is not None and error.rate_limit.retry_after is not None:
            return error.rate_limit.retry_after
        seconds = error.details.get("retry_after_seconds")
        return float(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else None

    def delay(self, error: GenplaneError, attempt: int) -> float:
        """Seconds before the next attempt: the server's word if it gave one, else back-off."""
        asked = self.server_delay(error)
        return asked if asked is not None else self.backoff(attempt)
