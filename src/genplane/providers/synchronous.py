"""What adapters share whose provider makes the whole generation inside one HTTP call.

Such a call (OpenAI and Gemini images, Imagen, Workers AI, an OpenAI-compatible box)
takes as long as the generation, not as long as a usual request; the calls one job
needs run together, and once one of them fails the others are of no use: the job
fails, or moves on to the next provider, as a whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from genplane.settings import Settings

T = TypeVar("T")


def whole_generation_timeout(settings: Settings) -> float:
    """The request timeout of a call that is the whole generation: as long as the attempt may take."""
    return max(settings.image_attempt_deadline_seconds, settings.provider_request_timeout_seconds)


async def all_or_first_failure(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every call's result in order; the first failure cancels the calls still running and is raised."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
