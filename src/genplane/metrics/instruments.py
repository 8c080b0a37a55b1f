"""Every Prometheus instrument genplane records, each named once.

They are module-level, as prometheus-client wants them: in multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the process imports prometheus-client) each label
child writes to this process's file in that directory, and ``/metrics`` of any process sums
the files. Label values always come from bounded sets (operation ids, route templates,
status codes, catalogue models, provider ids, outcomes), never from an id or a raw path:
every distinct value is a series kept for the life of the process, in every process.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Histogram, disable_created_metrics

log = structlog.get_logger("genplane.metrics")

# No ``*_created`` series beside every counter and histogram: the text format's scrapers
# read them as series of their own, doubling the count for a timestamp nobody graphs (and
# the multiprocess mode, which ``serve --workers N`` uses, has none to give).
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Requests answered within milliseconds (reads) up to the longest ``Prefer: wait`` and downloads.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Provider attempts take from about a second (images) to the video deadline (250 s by default).
_ATTEMPT_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0)

HTTP_REQUESTS = Counter(
    "genplane_http_requests",
    "HTTP requests answered, by operation (the OpenAPI operation id, the route template outside "
    "the API, 'unmatched' when no route matched) and status code.",
    ("operation", "status"),
)
HTTP_REQUEST_SECONDS = Histogram(
    "genplane_http_request_seconds",
    "Time from a request's arrival to the end of its response, by operation and status code.",
    ("operation", "status"),
    buckets=_REQUEST_BUCKETS,
)
GENERATIONS_ENDED = Counter(
    "genplane_generations_ended",
    "Generations that reached a terminal status, by model, provider (the one that succeeded, "
    "else the last one tried or running; 'none' when none was) and outcome "
    "(succeeded, failed, canceled).",
    ("model", "provider", "outcome"),
)
PROVIDER_ATTEMPT_SECONDS = Histogram(
    "genplane_provider_attempt_seconds",
    "Duration of provider attempts, from submit to the end of the attempt (outputs stored, for "
    "a successful one), by provider and outcome (used, failed, canceled, discarded).",
    ("provider", "outcome"),
    buckets=_ATTEMPT_BUCKETS,
)
CREDITS_RESERVED = Counter(
    "genplane_credits_reserved",
    "Credits reserved when generations were admitted, in credits (1 credit = 1 USD; the ledger "
    "keeps milli-credits).",
)
CREDITS_CHARGED = Counter(
    "genplane_credits_charged",
    "Credits charged for succeeded generations, in credits (1 credit = 1 USD).",
)
CREDITS_REFUNDED = Counter(
    "genplane_credits_refunded",
    "Credits refunded for failed and canceled generations, in credits (1 credit = 1 USD).",
)


_failed: set[str] = set()


def recording_failed(where: str, exc: Exception) -> None:
    """Note that recording a metric raised; logged once per place and process.

    A metric must never fail what it measures: a committed transaction, an answered request,
    a finished attempt. In multiprocess mode a record is a write to a file, which can fail
    (the directory removed under a running process)."""
    if where not in _failed:
        _failed.add(where)
        log.error("metrics_recording_failed", where=where, error=repr(exc))
