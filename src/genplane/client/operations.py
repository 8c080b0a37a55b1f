"""Every method of both clients, declared once and bound to either.

A method here is a descriptor around I/O-free code: :class:`operation` around a
:mod:`~genplane.client.calls` builder, :class:`helper` around a
:mod:`~genplane.client.flows` flow, :class:`iterator` around a flow that emits items.
Read on a sync object it returns the result; on an async one, an awaitable (or an
async iterator). Type checkers see both (``client.status()`` is a
``Response[StatusData]``, so is ``await aclient.status()``), and each method has one
definition, one docstring and one place to fix.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from genplane.client import calls, flows
from genplane.client.calls import Call
from genplane.client.config import ClientConfig, resolve_api_key, resolve_base_url
from genplane.client.flows import Flow, FlowContext
from genplane.client.models import Generation, Response
from genplane.client.retries import RetryPolicy

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=Response[Any])


class SyncRunner:
    """Runs flows with blocking I/O (the sync client and its namespaces)."""

    _context: FlowContext

    def _drive(self, flow: Flow[T]) -> T:
        raise NotImplementedError

    def _iterate(self, flow: Flow[None]) -> Iterator[Any]:
        raise NotImplementedError


class AsyncRunner:
    """Runs flows with ``await`` (the async client and its namespaces)."""

    _context: FlowContext

    async def _drive(self, flow: Flow[T]) -> T:
        raise NotImplementedError

    def _iterate(self, flow: Flow[None]) -> AsyncIterator[Any]:
        raise NotImplementedError


def _bind(fn: Callable[..., Any], run: Callable[..., Any], make: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``'s name, docstring and signature (minus a leading context) on ``run(make(...))``."""

    @functools.wraps(fn)
    def bound(*args: Any, **kwargs: Any) -> Any:
        return run(make(*args, **kwargs))

    params = list(inspect.signature(fn).parameters.values())
    if params and params[0].name == "ctx":
        bound.__signature__ = inspect.signature(fn).replace(parameters=params[1:])  # type: ignore[attr-defined]
    return bound


class operation(Generic[P, R]):
    """One API operation: ``status = operation(calls.status)``; retried per the client's policy."""

    def __init__(self, build: Callable[P, Call[R]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> operation[P, R]: ...
    @overload
    def __get__(self, obj: SyncRunner, owner: type[Any]) -> Callable[P, R]: ...
    @overload
    def __get__(self, obj: AsyncRunner, owner: type[Any]) -> Callable[P, Awaitable[R]]: ...

    def __get__(self, obj: SyncRunner | AsyncRunner | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        ctx = obj._context
        return _bind(self.build, obj._drive, lambda *a, **k: flows.request(self.build(*a, **k), ctx.policy))


class helper(Generic[P, T]):
    """A multi-request helper from a flow taking the client's context first."""

    def __init__(self, flow: Callable[Concatenate[FlowContext, P], Flow[T]]) -> None:
        self.flow = flow
        self.__doc__ = flow.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> helper[P, T]: ...
    @overload
    def __get__(self, obj: SyncRunner, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncRunner, owner: type[Any]) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, obj: SyncRunner | AsyncRunner | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        ctx = obj._context
        return _bind(self.flow, obj._drive, lambda *a, **k: self.flow(ctx, *a, **k))


class iterator(Generic[P, T]):
    """An iterator from a flow that emits items: ``for x in ...`` or ``async for x in ...``."""

    def __init__(self, flow: Callable[Concatenate[FlowContext, P], Flow[None]], item: type[T]) -> None:
        self.flow = flow
        self.__doc__ = flow.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> iterator[P, T]: ...
    @overload
    def __get__(self, obj: SyncRunner, owner: type[Any]) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, obj: AsyncRunner, owner: type[Any]) -> Callable[P, AsyncIterator[T]]: ...

    def __get__(self, obj: SyncRunner | AsyncRunner | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        ctx = obj._context
        return _bind(self.flow, obj._iterate, lambda *a, **k: self.flow(ctx, *a, **k))


class ClientMethods:
    """The methods both clients share; only how they perform I/O differs."""

    config: ClientConfig
    _context: FlowContext

    def _configure(
        self, api_key: str | None, base_url: str | None, region: str | None, timeout: float, max_retries: int
    ) -> None:
        self.config = ClientConfig(resolve_api_key(api_key), resolve_base_url(base_url, region), timeout)
        self._context = FlowContext(RetryPolicy(max_retries=max_retries))

    def __repr__(self) -> str:  # the key stays out: reprs end up in logs
        return f"{type(self).__name__}(base_url={self.config.base_url!r})"

    status = operation(calls.status)
    usage = operation(calls.usage)
    account = operation(calls.account)
    billing = operation(calls.billing)
    estimate = operation(calls.estimate)
    generate = operation(calls.generate)
    get_generation = operation(calls.get_generation)
    list_generations = operation(calls.list_generations)
    delete_generation = operation(calls.delete_generation)
    cancel_generation = operation(calls.cancel_generation)

    wait = helper(flows.wait)
    wait_for_generation = wait  # the official SDK's name (waitForGeneration)
    generate_and_wait = helper(flows.generate_and_wait)
    download = helper(flows.download)
    iter_generations = iterator(flows.pages, Generation)


class LibraryMethods:
    """``client.library``: what can be generated, and by whom."""

    providers = operation(calls.library_providers)
    models = operation(calls.library_models)


class HealthMethods:
    """``client.health``: live health of providers, models, storage and cache."""

    providers = operation(calls.health_providers)
    models = operation(calls.health_models)
    storage = operation(calls.health_storage)
    cache = operation(calls.health_cache)


class _SyncNamespace(SyncRunner):
    """A group of operations sending through its client (``client.library``, ``client.health``)."""

    def __init__(self, client: SyncRunner) -> None:
        self._client, self._context = client, client._context

    def _drive(self, flow: Flow[T]) -> T:
        return self._client._drive(flow)

    def _iterate(self, flow: Flow[None]) -> Iterator[Any]:
        return self._client._iterate(flow)


class _AsyncNamespace(AsyncRunner):
    def __init__(self, client: AsyncRunner) -> None:
        self._client, self._context = client, client._context

    async def _drive(self, flow: Flow[T]) -> T:
        return await self._client._drive(flow)

    def _iterate(self, flow: Flow[None]) -> AsyncIterator[Any]:
        return self._client._iterate(flow)


class Library(LibraryMethods, _SyncNamespace):
    pass


class Health(HealthMethods, _SyncNamespace):
    pass


class AsyncLibrary(LibraryMethods, _AsyncNamespace):
    pass


class AsyncHealth(HealthMethods, _AsyncNamespace):
    pass
