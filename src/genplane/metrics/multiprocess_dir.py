"""The multiprocess directory of ``serve --workers N``: where its children's metrics meet.

The supervisor makes a fresh one for each run (a leftover directory would carry another
run's counters into this one's totals) and removes it when it stops, unless the operator
named one in ``PROMETHEUS_MULTIPROC_DIR``, which is then used as it is and kept. A child
that exits is marked dead, which drops its live gauges; its counters stay, so totals do
not go back when a child is replaced.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from prometheus_client import multiprocess

from genplane.metrics.exposition import MULTIPROC_ENV, multiprocess_directory


class ChildMetricsDirectory:
    def __init__(self) -> None:
        given = multiprocess_directory()
        self.path = given if given is not None else tempfile.mkdtemp(prefix="genplane-metrics-")
        self.owned = given is None

    def child_env(self) -> dict[str, str]:
        """The environment a child starts with: this one, and the directory."""
        return {**os.environ, MULTIPROC_ENV: self.path}

    def process_exited(self, pid: int) -> None:
        multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
