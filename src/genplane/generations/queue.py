"""What generations need of job dispatch, and nothing more.

The service hands a new generation to whatever runs jobs (the in-process worker, or a
distributed queue) and asks it to stop one it may be running; the database row stays
the truth either way. A protocol here keeps ``generations`` from importing ``jobs``,
which depends on it.
"""

from __future__ import annotations

from typing import Protocol


class JobQueue(Protocol):
    def enqueue(self, generation_id: str) -> None:
        """Run the generation soon; a hint, since a sweep finds every due job anyway."""

    def cancel_local(self, generation_id: str) -> bool:
        """Stop the job if this process runs it; True when it did."""
