"""Everything the clients do, as generators that yield the I/O they need (no I/O here).

A flow yields steps (:class:`Send` one request, :class:`Sleep`, :class:`Fetch` one file,
:class:`Emit` one item to the caller) and is sent back each step's outcome. The sync
client performs steps with blocking calls, the async one with ``await``: retries,
waiting and paging are written once and behave identically in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from genplane.client import calls
from genplane.client.calls import MAX_PREFER_WAIT, Call
from genplane.client.errors import (
    GenerationFailedError,
    GenerationTimeoutError,
    GenplaneError,
    NetworkError,
    RequestTimeoutError,
    error_from_response,
)
from genplane.client.models import Generation, Response
from genplane.client.retries import RetryPolicy

T = TypeVar("T")
R = TypeVar("R", bound=Response[Any])

#: Polling never goes faster than this, whatever interval the caller gives.
MIN_POLL_INTERVAL = 0.5
#: Back-off polling (a server that does not hold requests) grows up to this.
MAX_POLL_INTERVAL = 10.0


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, body read in full."""

    status: int
    headers: httpx.Headers
    content: bytes


@dataclass(frozen=True)
class Send:
    """Send ``call`` once; the outcome is a :class:`Reply` or the transport's exception."""

    call: Call[Any]


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Fetch:
    """Stream ``url`` into ``directory`` as ``stem`` + an extension; the outcome is the
    :class:`~pathlib.Path` written, or an exception (a :class:`GenplaneError` for an
    error status, the transport's own otherwise)."""

    url: str
    directory: Path
    stem: str


@dataclass(frozen=True)
class Emit:
    """Hand ``item`` to the caller of an iterator; the outcome is ``None``."""

    item: Any


Step = Send | Sleep | Fetch | Emit
Flow = Generator[Step, Any, T]


@dataclass(frozen=True)
class Finished:
    """A flow's return value, emitted last by :func:`emitting_result`."""

    value: Any


def emitting_result(flow: Flow[Any]) -> Flow[None]:
    """``flow`` with its return value emitted as a last :class:`Finished` item, so that a
    client needs one loop (the iterating one) to run flows of both kinds."""
    value = yield from flow
    yield Emit(Finished(value))


@dataclass(frozen=True)
class FlowContext:
    """What flows need from their client besides I/O: the retry policy and a clock."""

    policy: RetryPolicy
    clock: Callable[[], float] = time.monotonic


def network_error(exc: BaseException) -> GenplaneError:
    """A transport failure as an SDK error: timeouts apart, every failure is a retryable
    :class:`NetworkError` (whether it may be retried is the request's business)."""
    if isinstance(exc, GenplaneError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        error: GenplaneError = RequestTimeoutError(f"request timed out: {exc}", retryable=True)
    else:
        error = NetworkError(f"network error: {exc or type(exc).__name__}", retryable=True)
    error.__cause__ = exc
    return error


def request(call: Call[R], policy: RetryPolicy) -> Flow[R]:
    """Send ``call`` until it succeeds, fails for good, or the retries are spent."""
    attempt = 0
    while True:
        attempt += 1
        outcome = yield Send(call)
        if isinstance(outcome, Reply):
            if 200 <= outcome.status < 300:
                return call.parse(outcome.status, outcome.headers, outcome.content)
            error = error_from_response(outcome.status, outcome.headers, outcome.content)
            delay = policy.delay(error, attempt)
        else:
            error = network_error(outcome)
            delay = policy.backoff(attempt)
        if not policy.should_retry(error, attempt, replayable=call.replayable):
            raise error
        yield Sleep(delay)


def wait(
    ctx: FlowContext,
    /,
    generation_id: str,
    timeout: float = 600.0,
    interval: float = 2.0,
    *,
    long_poll: int = MAX_PREFER_WAIT,
    on_update: Callable[[Generation], object] | None = None,
) -> Flow[Response[Generation]]:
    """Until the generation is terminal: long-polls with ``Prefer: wait``, else polls.

    Each GET asks the server to hold it up to 60 s (never past the deadline), so a
    two-minute generation costs about three requests instead of sixty. A server that
    does not grant the preference (no ``Preference-Applied``) answers at once; from then
    on the flow polls every ``interval`` seconds, growing by half each time up to 10 s.
    ``long_poll`` caps each hold (1-60 s): shorter holds report progress more often.
    ``on_update`` is called with the record after every answer (a progress display).

    >>> created = client.generate("local/preview-video", generation_prompt="waves",  # doctest: +SKIP
    ...                           generation_duration=3)
    >>> client.wait(created.data.generation_id, timeout=120).data.generation_output_file  # doctest: +SKIP
    ['http://127.0.0.1:8000/files/…/0.mp4']

    Raises :class:`GenerationFailedError` when it ends ``failed`` or ``canceled`` (its
    ``code`` is the record's ``generation_error_code``) and
    :class:`GenerationTimeoutError` when ``timeout`` passes first; the generation itself
    keeps running then.
    """
    if not 1 <= long_poll <= MAX_PREFER_WAIT:
        raise ValueError(f"long_poll is 1 to {MAX_PREFER_WAIT} seconds, not {long_poll}")
    policy, clock = ctx.policy, ctx.clock
    deadline = clock() + timeout
    server_holds = True
    pause = max(MIN_POLL_INTERVAL, interval)
    while True:
        remaining = deadline - clock()
        hold = min(long_poll, int(remaining + 0.5)) if server_holds else 0  # whole seconds
        started = clock()
        got = yield from request(calls.get_generation(generation_id, wait=hold or None), policy)
        record = got.data
        if on_update is not None:
            on_update(record)
        if record.generation_status == "succeeded":
            return got
        if record.terminal:
            raise GenerationFailedError(record)
        remaining = deadline - clock()
        if remaining <= 0:
            raise GenerationTimeoutError(generation_id, timeout, record.generation_status)
        if hold:
            if got.preference_applied is None:
                server_holds = False  # the server ignores the preference: poll from now on
            elif clock() - started >= hold / 2:
                continue  # the server held the request: ask again at once
        yield Sleep(min(pause, remaining))
        pause = min(max(MAX_POLL_INTERVAL, interval), pause * 1.5)


def generate_and_wait(
    ctx: FlowContext,
    /,
    model: str,
    params: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    timeout: float = 600.0,
    interval: float = 2.0,
    **fields: Any,
) -> Flow[Response[Generation]]:
    """Create a generation and return its finished record: for scripts and CLIs.

    The create asks the server to hold its answer until the generation ends (up to
    60 s), so a quick generation costs two requests. Services with steady traffic do
    better with ``generate`` and a webhook than with a request held per generation.

    >>> done = client.generate_and_wait(  # doctest: +SKIP
    ...     "local/preview-image", {"generation_prompt": "a red fox"}, generation_output_number=2
    ... )
    >>> len(done.data.generation_output_file)  # doctest: +SKIP
    2
    """
    hold = min(MAX_PREFER_WAIT, int(timeout)) or None
    create = calls.generate(model, params, idempotency_key=idempotency_key, wait=hold, **fields)
    started = ctx.clock()
    created = yield from request(create, ctx.policy)
    left = max(0.0, timeout - (ctx.clock() - started))
    return (yield from wait(ctx, created.data.generation_id, timeout=left, interval=interval))


def pages(ctx: FlowContext, /, page_size: int = 50) -> Flow[None]:
    """Every generation, newest first, one page at a time, until a page comes back short.

    A generation created while paging shifts older ones to later offsets, so one can
    appear twice across pages: each id is emitted once.

    >>> for generation in client.iter_generations(page_size=100):  # doctest: +SKIP
    ...     if generation.generation_status == "failed":
    ...         print(generation.generation_id, generation.generation_error_code)
    """
    if not 1 <= page_size <= 100:
        raise ValueError(f"page_size is 1 to 100, not {page_size}")
    offset = 0
    seen: set[str] = set()
    while True:
        page = yield from request(calls.list_generations(limit=page_size, offset=offset), ctx.policy)
        batch = page.data.generations
        for generation in batch:
            if generation.generation_id not in seen:
                seen.add(generation.generation_id)
                yield Emit(generation)
        offset += len(batch)
        if len(batch) < page_size or offset >= page.total:
            return


def download(
    ctx: FlowContext, /, generation: Generation | Response[Generation] | str, directory: str | Path = "."
) -> Flow[list[Path]]:
    """Save every output file of a succeeded generation into ``directory``.

    Files are named ``<generation_id>-<n>.<ext>`` so the outputs of many generations can
    share a folder. Each file is streamed to disk (a video never sits in memory) under a
    temporary name and renamed when complete. A failed file is retried like any GET;
    an error status is raised. Returns the paths, in the record's order.

    >>> client.download(client.generate_and_wait("local/preview-image", generation_prompt="a fox"),
    ...                 "out")  # doctest: +SKIP
    [PosixPath('out/0d3c…-0.png')]
    """
    policy, directory = ctx.policy, Path(directory)
    if isinstance(generation, str):
        generation = (yield from request(calls.get_generation(generation), policy)).data
    elif isinstance(generation, Response):
        generation = generation.data
    if generation.generation_status != "succeeded":
        raise GenplaneError(
            f"generation {generation.generation_id} is {generation.generation_status}: no files to download"
        )
    paths: list[Path] = []
    for index, url in enumerate(generation.generation_output_file or []):
        attempt = 0
        while True:
            attempt += 1
            outcome = yield Fetch(url, directory, f"{generation.generation_id}-{index}")
            if isinstance(outcome, Path):
                paths.append(outcome)
                break
            error = network_error(outcome)
            if not policy.should_retry(error, attempt, replayable=True):
                raise error
            yield Sleep(policy.delay(error, attempt))
    return paths
