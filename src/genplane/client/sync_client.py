"""The blocking client: :class:`Client` performs the flows' steps with httpx's sync API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from genplane.client import files
from genplane.client.config import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, USER_AGENT
from genplane.client.errors import error_from_response
from genplane.client.flows import Emit, Fetch, Flow, Reply, Send, Sleep, Step, emitting_result
from genplane.client.operations import ClientMethods, Health, Library, SyncRunner

T = TypeVar("T")


class Client(ClientMethods, SyncRunner):
    """A genplane (BabySea-compatible) API client for ordinary, blocking code.

    >>> from genplane.client import Client
    >>> with Client(api_key="bye_us_...", base_url="http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     done = client.generate_and_wait("local/preview-image", generation_prompt="a lighthouse at dawn")
    ...     paths = client.download(done, "out")

    ``api_key`` and ``base_url`` default to ``GENPLANE_API_KEY`` and ``GENPLANE_BASE_URL``
    (else ``http://127.0.0.1:8000``); ``region="eu"`` means ``https://api.eu.<domain>``.
    ``timeout`` bounds each request (a ``Prefer: wait`` adds its seconds), and
    ``max_retries`` how often a failed request that may be repeated is sent again.
    ``transport`` replaces httpx's network transport (tests, proxies); ``sleep`` replaces
    :func:`time.sleep` between retries, so a test can check delays without waiting them.
    One client holds one connection pool: share it, and close it (or use ``with``).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        region: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self._configure(api_key, base_url, region, timeout, max_retries)
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)
        self.library = Library(self)
        self.health = Health(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- performing the flows' steps ---------------------------------------------------

    def _drive(self, flow: Flow[T]) -> T:
        *_, last = self._iterate(emitting_result(flow))
        return last.value  # type: ignore[no-any-return]

    def _iterate(self, flow: Flow[None]) -> Iterator[Any]:
        outcome: Any = None
        while True:
            try:
                step = flow.send(outcome)
            except StopIteration:
                return
            if isinstance(step, Emit):
                yield step.item
                outcome = None
            else:
                outcome = self._perform(step)

    def _perform(self, step: Step) -> Any:
        if isinstance(step, Send):
            try:
                r = self._http.request(**self.config.request_args(step.call))
            except httpx.TransportError as exc:
                return exc
            return Reply(r.status_code, r.headers, r.content)
        if isinstance(step, Sleep):
            self._sleep(step.seconds)
            return None
        if isinstance(step, Fetch):
            return self._fetch(step)
        raise TypeError(f"unknown step {step!r}")

    def _fetch(self, step: Fetch) -> Path | Exception:
        partial: Path | None = None
        try:
            with self._http.stream(
                "GET", step.url, headers={"User-Agent": USER_AGENT}, follow_redirects=True
            ) as r:
                if r.status_code != 200:
                    return error_from_response(r.status_code, r.headers, r.read())
                path = files.target(step.directory, step.stem, step.url, r.headers.get("content-type"))
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = files.partial(path)
                with partial.open("wb") as out:
                    for chunk in r.iter_bytes():
                        out.write(chunk)
                partial.replace(path)
                partial = None
                return path
        except httpx.TransportError as exc:
            return exc
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)
