"""``Prefer: wait``: hold a read or a create open until the generation is terminal.

The header follows RFC 7240 (``Prefer``, ``Preference-Applied``) with Replicate's
reading of its ``wait`` preference: ``wait=N`` waits at most N seconds, N a whole number
from 1 to 60, and a bare ``wait`` means 60. Other preferences are ignored, as RFC 7240
asks of a server that does not support them; of a repeated ``wait`` the first counts. A
``wait`` whose value is not 1..60 is ``400 bse_invalid_input`` (``details.field`` =
``Prefer``): ignored, it would turn a client's long-poll loop into a tight one.

The wait granted is also bounded by ``prefer_wait_max_seconds``; the edge gives a request
that asks to wait that much time beyond ``request_timeout_seconds`` (:func:`extra_seconds`),
so the timeout keeps bounding the work and not the wait. The response says what was
granted in ``Preference-Applied: wait=N``.

A waiting request holds no database session (each read of the row is one statement) and
ends early when the client disconnects: the wait is raced against the ASGI ``receive``
channel, which yields ``http.disconnect`` the moment the connection closes, with no
polling of ``Request.is_disconnected``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Header
from starlette.types import Receive

from genplane.contract.errors import invalid_input
from genplane.settings import Settings

#: The longest wait the header can ask for, and what a bare ``wait`` asks for.
MAX_WAIT_SECONDS = 60
HEADER = "Prefer"
APPLIED_HEADER = "Preference-Applied"

PreferHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        max_length=256,
        description=(
            "RFC 7240 preferences. 'wait' or 'wait=N' (N = 1..60 seconds; bare 'wait' is 60) holds "
            "the request open until the generation is succeeded, failed or canceled, or N seconds "
            "have passed; the answer is the same as without the header, sent then, with "
            "'Preference-Applied: wait=<seconds granted>' (the deployment may grant less). Another "
            "value of wait is 400 bse_invalid_input; other preferences are ignored."
        ),
    ),
]

_T = TypeVar("_T")


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside quoted strings (RFC 9110 quoted-string)."""
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out).strip()
    return value


def requested_wait(header: str | None) -> int | None:
    """Seconds the ``Prefer`` header asks to wait; None without a ``wait`` preference.

    Raises ``bse_invalid_input`` for a ``wait`` that is not a whole number from 1 to 60.
    """
    if not header:
        return None
    for preference in _split(header, ","):
        name, _, value = _split(preference, ";")[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        value = _unquote(value.strip())
        if not value:  # RFC 7240: an empty value is no value; Replicate: bare wait is 60 s
            return MAX_WAIT_SECONDS
        if value.isascii() and value.isdigit() and len(value) <= 3 and 1 <= int(value) <= MAX_WAIT_SECONDS:
            return int(value)
        raise invalid_input(
            HEADER,
            f"Header '{HEADER}': wait must be a whole number of seconds from 1 to {MAX_WAIT_SECONDS} "
            f"('wait' alone waits {MAX_WAIT_SECONDS}).",
        )
    return None


def granted_wait(header: str | None, settings: Settings) -> int | None:
    """The wait this request gets, in whole seconds; None when it does not wait."""
    requested = requested_wait(header)
    if requested is None:
        return None
    cap = settings.prefer_wait_max_seconds
    return min(requested, cap) if cap >= 1 else None


def extra_seconds(header: str | None, settings: Settings) -> float:
    """Time the edge adds to the request timeout for a request that may wait (before the header
    is checked: a refused one ends at once anyway)."""
    return float(settings.prefer_wait_max_seconds) if header and "wait" in header.lower() else 0.0


def applied(seconds: int) -> dict[str, str]:
    return {APPLIED_HEADER: f"wait={seconds}"}


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone; what else arrives (an already-read body's end) is dropped."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(receive: Receive, work: Awaitable[_T]) -> tuple[bool, _T | None]:
    """``(True, result of work)``, or ``(False, None)`` when the client disconnected first.

    ``work`` is cancelled when the client goes (its cleanup, such as leaving a waiters'
    table, has run when this returns), and both tasks when the caller is cancelled.
    """
    job = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((job, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (job, gone):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(job, gone, return_exceptions=True)
    if job.cancelled():
        return False, None
    return True, job.result()


def remaining(started: float, seconds: int) -> float:
    """What is left of a ``seconds`` wait counted from ``started`` (the loop's clock)."""
    return seconds - (asyncio.get_running_loop().time() - started)
