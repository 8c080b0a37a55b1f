"""The HTTP request instruments' label children, looked up once per route and status.

Labelling a child (``Counter.labels``) takes a lock and builds a key every time; a request
instead finds its pair of children in two dict look-ups: by the route's endpoint (one object
per route; a ``{model_identifier:path}`` route is one entry whatever the model), then by the
status code. The operation label is the route's OpenAPI operation id, else its template;
a request no route matched is labelled by the operation the firewall found it to be, else
``unmatched``. So the label sets are bounded by the app's routes and status codes, never by
what clients put in a path.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.metrics import Counter, Histogram

from genplane.metrics.instruments import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, recording_failed

UNMATCHED = "unmatched"


class _Operation:
    """One operation's children, by status code."""

    __slots__ = ("by_status", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_status: dict[int, tuple[Counter, Histogram]] = {}

    def children(self, status: int) -> tuple[Counter, Histogram]:
        code = str(status)
        pair = self.by_status[status] = (
            HTTP_REQUESTS.labels(self.name, code),
            HTTP_REQUEST_SECONDS.labels(self.name, code),
        )
        return pair


#: Routes whose requests are not counted (the probes and the scrape itself).
_UNCOUNTED = _Operation("")


class RequestMetrics:
    """Counts each answered request and observes its duration (EdgeMiddleware calls it)."""

    def __init__(self, uncounted_paths: frozenset[str] = frozenset()) -> None:
        self.uncounted_paths = uncounted_paths
        self._by_key: dict[Any, _Operation] = {}

    def observe(self, route: Any, operation_id: str | None, status: int, seconds: float) -> None:
        """``route``: the route that handled the request (``scope["route"]``), or None;
        ``operation_id``: the operation the firewall matched a request it refused, or None."""
        key = getattr(route, "endpoint", None) if route is not None else operation_id
        operation = self._by_key.get(key)
        if operation is None:
            operation = self._by_key[key] = self._operation(route, operation_id)
        if operation is _UNCOUNTED:
            return
        try:
            pair = operation.by_status.get(status)
            if pair is None:
                pair = operation.children(status)
            pair[0].inc()
            pair[1].observe(seconds)
        except Exception as exc:  # the request was answered; its count must not fail it
            recording_failed("http_request", exc)

    def _operation(self, route: Any, operation_id: str | None) -> _Operation:
        if route is None:
            return _Operation(operation_id or UNMATCHED)
        path = str(getattr(route, "path", ""))
        if path in self.uncounted_paths:
            return _UNCOUNTED
        return _Operation(getattr(route, "operation_id", None) or path or UNMATCHED)
