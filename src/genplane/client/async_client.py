"""The asyncio/trio client: :class:`AsyncClient` performs the flows' steps with ``await``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx

from genplane.client import files
from genplane.client.config import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, USER_AGENT
from genplane.client.errors import error_from_response
from genplane.client.flows import Emit, Fetch, Flow, Reply, Send, Sleep, Step, emitting_result
from genplane.client.operations import AsyncHealth, AsyncLibrary, AsyncRunner, ClientMethods

T = TypeVar("T")


class AsyncClient(ClientMethods, AsyncRunner):
    """The same client as :class:`~genplane.client.Client`, every method awaited.

    >>> import asyncio
    >>> from genplane.client import AsyncClient
    >>> async def main() -> None:
    ...     async with AsyncClient(api_key="bye_us_...", base_url="http://127.0.0.1:8000") as client:
    ...         done = await client.generate_and_wait("local/preview-image", generation_prompt="a fox")
    ...         print(await client.download(done, "out"))
    ...         async for generation in client.iter_generations():
    ...             print(generation.generation_id, generation.generation_status)
    >>> asyncio.run(main())  # doctest: +SKIP

    Waiting (``wait``, ``generate_and_wait``) holds no thread: run many at once with
    ``asyncio.gather``. ``sleep`` replaces :func:`anyio.sleep` between retries (tests).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        region: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
    ) -> None:
        self._configure(api_key, base_url, region, timeout, max_retries)
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
        self.library = AsyncLibrary(self)
        self.health = AsyncHealth(self)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- performing the flows' steps ---------------------------------------------------

    async def _drive(self, flow: Flow[T]) -> T:
        items = [item async for item in self._iterate(emitting_result(flow))]
        return items[-1].value  # type: ignore[no-any-return]

    async def _iterate(self, flow: Flow[None]) -> AsyncIterator[Any]:
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
                outcome = await self._perform(step)

    async def _perform(self, step: Step) -> Any:
        if isinstance(step, Send):
            try:
                r = await self._http.request(**self.config.request_args(step.call))
            except httpx.TransportError as exc:
                return exc
            return Reply(r.status_code, r.headers, r.content)
        if isinstance(step, Sleep):
            await self._sleep(step.seconds)
            return None
        if isinstance(step, Fetch):
            return await self._fetch(step)
        raise TypeError(f"unknown step {step!r}")

    async def _fetch(self, step: Fetch) -> Path | Exception:
        partial: anyio.Path | None = None
        try:
            async with self._http.stream(
                "GET", step.url, headers={"User-Agent": USER_AGENT}, follow_redirects=True
            ) as r:
                if r.status_code != 200:
                    return error_from_response(r.status_code, r.headers, await r.aread())
                path = files.target(step.directory, step.stem, step.url, r.headers.get("content-type"))
                await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
                partial = anyio.Path(files.partial(path))
                async with await anyio.open_file(partial, "wb") as out:
                    async for chunk in r.aiter_bytes():
                        await out.write(chunk)
                await partial.replace(path)
                partial = None
                return path
        except httpx.TransportError as exc:
            return exc
        finally:
            if partial is not None:
                await partial.unlink(missing_ok=True)
