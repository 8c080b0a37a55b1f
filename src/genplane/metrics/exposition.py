"""What ``/metrics`` renders, in one process or summed over every process of a host.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``serve --workers N`` sets it for its children;
an operator sets it for ``serve`` and ``genplane worker`` processes that should report
together), every process writes its instruments to its own files there and a scrape, in
whichever process answers it, sums all the files: the counters of every process, those that
have exited included, so totals never go back. Without it, the scrape reports this
process's own registry. Either way the scrape-time backlog gauges are added once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from genplane.metrics.backlog import BacklogCollector

#: prometheus-client's switch to multiprocess mode, read when it is first imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The exposition's media type (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_directory() -> str | None:
    """The multiprocess directory in force, or None; one that is set but missing is an error
    now, at start-up, rather than in the middle of a generation's first counted commit."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory and not os.path.isdir(directory):
        raise ValueError(f"{MULTIPROC_ENV}={directory} is not a directory")
    return directory or None


class _ThisProcess(Collector):
    """The process's default registry (its instruments, and the process and GC collectors)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class Exposition:
    def __init__(self, backlog: BacklogCollector) -> None:
        self.backlog = backlog
        self.registry = CollectorRegistry()
        directory = multiprocess_directory()
        if directory is not None:
            MultiProcessCollector(self.registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(_ThisProcess())
        self.registry.register(backlog)

    async def render(self) -> bytes:
        await self.backlog.refresh()
        return generate_latest(self.registry)
