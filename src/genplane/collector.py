"""Garbage-collector settings for a long-running genplane process.

A worker with thousands of jobs in flight tracks about a hundred objects per job (tasks,
coroutine frames, rows, HTTP requests). With CPython's default young generation (700
objects) each request's short-lived objects are promoted, and full collections of a
million objects keep stopping the event loop (bench/inflight.py measured 105 of them, up to
1.4 s each, at 10,000 jobs). Freezing what start-up built (never garbage) and a larger young
generation took that to two. Only ``genplane serve`` applies this, once its app has
started: the objects frozen then are the ones that live as long as the process.
"""

from __future__ import annotations

import gc

from genplane.settings import Settings


def tune_after_startup(settings: Settings) -> None:
    if settings.gc_young_threshold == 0:
        return
    gc.collect()
    gc.freeze()
    # A full collection only after 100 of the middle generation's (Python: 10): with the
    # default, 10,000 jobs in flight still saw 14 full collections of up to 1.3 s.
    gc.set_threshold(settings.gc_young_threshold, 10, 100)
