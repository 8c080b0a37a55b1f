"""The status vocabularies, spelled once.

Values are ``StrEnum`` members, so they compare equal to the strings stored in the
database and sent on the wire; code names a member instead of writing the string, and
a misspelling ("cancelled" beside "canceled") is an attribute error, not a silent miss.
"""

from __future__ import annotations

from enum import StrEnum


class GenerationStatus(StrEnum):
    """A generation's state on the wire and in the ``generations`` table."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {GenerationStatus.SUCCEEDED, GenerationStatus.FAILED, GenerationStatus.CANCELED}
)


class AttemptOutcome(StrEnum):
    """How one provider attempt of a generation ended (``provider_attempts.outcome``)."""

    USED = "used"  # its outputs became the generation's
    FAILED = "failed"  # the provider answered with an error or timed out
    CANCELED = "canceled"  # the caller canceled while the provider worked
    DISCARDED = "discarded"  # it finished, but the generation had already ended


class DeliveryStatus(StrEnum):
    """A webhook delivery's state (``webhook_deliveries.status``)."""

    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"
    DEAD = "dead"  # the dead-letter list: the endpoint was disabled
    REPLAYED = "replayed"  # re-sent as a new delivery
