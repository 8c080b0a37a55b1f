"""Video jobs in flight at once in one process, each polling a fake provider: memory and loop lag.

Run: ``.venv/bin/python bench/inflight.py [--jobs 1000] [--polls 80] [--poll-interval 0.25]``
     ``.venv/bin/python bench/inflight.py --jobs 10000 --polls 40 --poll-interval 5``

One genplane app (SQLite, the real worker, the real Replicate adapter) runs in this
process; its network is the fake Replicate of tests/fakes, served in-process, whose
predictions stay "starting"/"processing" for ``--polls`` status polls before they
succeed with an MP4 at an expiring URL. All jobs are created first (``--batch`` at a time
over the ASGI client), and a prediction lives ``polls x poll-interval`` seconds, which
must exceed the time the creates take for all jobs to be in flight together. The run
then waits until every one is terminal and reports how long that took, what became of
each job, the process's memory (peak RSS, and per in-flight job) and the event loop's
lag: a ticker task sleeps ``--tick`` seconds over and over and records how late it
wakes, so a lag is time during which nothing else in the process could run. No job may
be lost, memory must stay bounded and the lag must stay small.

The worker's concurrency is set to ``--jobs`` directly (``GENPLANE_WORKER_CONCURRENCY``
validates at most 16,384). The fake network's log of every request it saw
(``FakeNetwork.seen``) is turned off: it would grow by one entry per poll and is no part
of genplane. The fake provider's own state (one dict per prediction) stays in the RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes import replicate as fake_replicate  # noqa: E402
from tests.fakes.network import FakeNetwork  # noqa: E402

from genplane.accounts import service as accounts  # noqa: E402
from genplane.accounts.scopes import parse_scopes  # noqa: E402
from genplane.api.app import create_app  # noqa: E402
from genplane.credits.money import to_millis  # noqa: E402
from genplane.db.models import Generation  # noqa: E402
from genplane.logs import configure_logging  # noqa: E402
from genplane.settings import Settings  # noqa: E402

MODEL = "bench/video"
CATALOG = """
models:
  - model_identifier: bench/video
    model_type: video
    model_pricing: 0.001
    schema:
      generation_ratio: ["16:9"]
      generation_output_format: [mp4]
      generation_output_number: 1
      generation_duration: [5]
      generation_resolution: ["720p"]
    providers:
      replicate: {model_id: bytedance/seedance-1-pro}
"""


def rss_mib() -> float:
    """Current resident memory of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def loop_thread_sched() -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of this thread, from /proc."""
    with open("/proc/thread-self/schedstat") as f:
        on_cpu, waiting, _ = f.read().split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9


class _Discard(list[Any]):
    """A request log that keeps nothing."""

    def append(self, item: Any) -> None:
        return None


@dataclass
class LagTicker:
    """How late a task that only sleeps wakes up: the event loop's lag, sampled every ``tick`` s."""

    tick: float
    phase: str = "idle"
    samples: dict[str, list[float]] = field(default_factory=dict)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(self.tick)
            late_ms = (loop.time() - began - self.tick) * 1000
            self.samples.setdefault(self.phase, []).append(max(0.0, late_ms))

    def pct(self, phase: str, q: float) -> float:
        s = sorted(self.samples.get(phase, [0.0]))
        return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class GcPauses:
    """The collector's pauses, by generation: each one stops the event loop."""

    pauses: dict[int, list[float]] = field(default_factory=dict)  # wall ms
    cpu: dict[int, float] = field(default_factory=dict)  # CPU s of the collecting thread
    _began: tuple[float, float] = (0.0, 0.0)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = (time.perf_counter(), time.thread_time())
            return
        generation = info["generation"]
        self.pauses.setdefault(generation, []).append((time.perf_counter() - self._began[0]) * 1000)
        self.cpu[generation] = self.cpu.get(generation, 0.0) + time.thread_time() - self._began[1]


async def run(args: argparse.Namespace) -> int:
    jobs, polls, poll_interval = args.jobs, args.polls, args.poll_interval
    configure_logging("WARNING")
    # One small MP4 for every prediction: the benchmark measures genplane, not PyAV.
    clip = fake_replicate.mp4_bytes()
    fake_replicate.mp4_bytes = functools.partial(lambda data: data, clip)  # type: ignore[assignment]
    network = FakeNetwork()
    network.seen = _Discard()
    provider = fake_replicate.FakeReplicate(
        queued_polls=polls // 2, running_polls=polls - polls // 2, video=True
    )
    provider.install(network)
    ticker = LagTicker(args.tick)
    collections = GcPauses()
    gc.callbacks.append(collections)
    with tempfile.TemporaryDirectory() as scratch:
        catalog = Path(scratch) / "catalog"
        catalog.mkdir()
        (catalog / "bench.yaml").write_text(CATALOG)
        settings = Settings(
            data_dir=Path(scratch) / "data",
            catalog_dir=catalog,
            replicate_api_token=provider.token,
            fetch_allow_hosts=[fake_replicate.CDN_HOST],
            provider_poll_interval_seconds=poll_interval,
            max_inflight_generations=jobs,
            rate_limit_per_minute=10 * jobs,
            video_attempt_deadline_seconds=max(600, int(polls * poll_interval * 3)),
            log_level="WARNING",
        )
        settings.worker_concurrency = jobs  # past the setting's validated ceiling when asked
        settings.gc_young_threshold = args.gc_young_threshold
        # As `genplane serve` builds it: the collector tuned once the app has started.
        app = create_app(settings, transport=network, tune_collector=True)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
        ticking = asyncio.create_task(ticker.run())
        background = [ticking]
        try:
            db = app.state.services.db
            account = await accounts.create_account(db, "bench", credits_millis=to_millis(jobs))
            scopes = parse_scopes("full_access", None)
            issued = await accounts.create_key(db, settings, account.id, "bench", scopes)
            headers = {"Authorization": f"Bearer {issued.key}"}
            gc.collect()
            await asyncio.sleep(1)
            base_rss = rss_mib()
            base_objects = len(gc.get_objects())
            body = {"generation_prompt": "waves", "generation_duration": 5}
            start = time.perf_counter()
            ticker.phase = "creating"

            async def create(_: int) -> str:
                r = await client.post(f"/v1/generate/video/{MODEL}", json=body, headers=headers)
                r.raise_for_status()
                return str(r.json()["data"]["generation_id"])

            ids: list[str] = []
            for offset in range(0, jobs, args.batch):
                batch = range(offset, min(jobs, offset + args.batch))
                ids += await asyncio.gather(*(create(i) for i in batch))
            created = time.perf_counter() - start
            ticker.phase = "in flight"
            inflight_objects = len(gc.get_objects())
            worker = app.state.services.worker
            peak_rss, peak_inflight, all_running_at = rss_mib(), 0, None
            polls_at_created, steady_from = provider.polls, time.perf_counter()
            sched_from = loop_thread_sched()
            deadline = time.monotonic() + args.timeout
            active = jobs
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                peak_rss = max(peak_rss, rss_mib())
                peak_inflight = max(peak_inflight, worker.in_flight)
                if all_running_at is None and worker.in_flight >= jobs:
                    all_running_at = time.perf_counter() - start
                async with db.read() as s:
                    active = int(
                        await s.scalar(
                            select(func.count())
                            .select_from(Generation)
                            .where(Generation.status.in_(("pending", "processing")))
                        )
                        or 0
                    )
                if active < jobs and ticker.phase == "in flight":
                    ticker.phase = "finishing"  # the first jobs end: downloads, stores, settlements
                    steady_polls = provider.polls - polls_at_created
                    steady_seconds = time.perf_counter() - steady_from
                    sched = [b - a for a, b in zip(sched_from, loop_thread_sched(), strict=True)]
                if active == 0:
                    break
            elapsed = time.perf_counter() - start
            async with db.read() as s:
                rows = (
                    await s.execute(select(Generation.status, func.count()).group_by(Generation.status))
                ).all()
            statuses: Counter[str] = Counter({status: int(n) for status, n in rows})
        finally:
            for task in background:
                task.cancel()
            await client.aclose()
            await lifespan.__aexit__(None, None, None)

    if ticker.phase == "in flight":  # never reached "finishing"
        steady_polls = provider.polls - polls_at_created
        steady_seconds = time.perf_counter() - steady_from
        sched = [b - a for a, b in zip(sched_from, loop_thread_sched(), strict=True)]
    lost = jobs - statuses["succeeded"] - statuses["failed"] - statuses["canceled"]
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    demanded = jobs / poll_interval
    print(f"in-flight video jobs: {jobs} jobs, {polls} polls each every {poll_interval} s, one process")
    print(f"  collector                  GENPLANE_GC_YOUNG_THRESHOLD={args.gc_young_threshold}"
          f"{' (Python defaults, nothing frozen)' if args.gc_young_threshold == 0 else ''}")
    print(f"  created all in             {created:7.2f} s  ({jobs / created:.0f}/s, {args.batch} at a time)")
    running = "never" if all_running_at is None else f"after {all_running_at:.2f} s"
    print(f"  all {jobs} running at once  {running}")
    print(f"  all terminal after         {elapsed:7.2f} s")
    print(f"  peak jobs running at once  {peak_inflight:7d}")
    print(f"  outcome                    {dict(statuses)}  (lost: {lost})")
    print(f"  provider polls answered    {provider.polls:7d}")
    print(f"  polls/s, all in flight     {steady_polls / max(steady_seconds, 1e-9):7.0f}  "
          f"(asked for: {demanded:.0f}/s = jobs / poll interval)")
    print(f"  loop thread, all in flight {sched[0] / steady_seconds:7.0%} on a CPU, "
          f"{sched[1] / steady_seconds:.0%} waiting for one (other processes) over {steady_seconds:.0f} s")
    print(f"  RSS before / peak          {base_rss:7.1f} / {peak_rss:.1f} MiB "
          f"({(peak_rss - base_rss) * 1024 / jobs:.1f} KiB per in-flight job; ru_maxrss {max_rss:.0f} MiB)")
    print(f"  event-loop lag (a {args.tick * 1000:.0f} ms ticker's oversleep), ms:")
    for phase in ("creating", "in flight", "finishing"):
        n = len(ticker.samples.get(phase, []))
        if n:
            print(f"    {phase:<11} p50 {ticker.pct(phase, 0.5):7.1f}  p99 {ticker.pct(phase, 0.99):7.1f}  "
                  f"max {ticker.pct(phase, 1.0):7.1f}  ({n} samples)")
    gc.callbacks.remove(collections)
    frozen = gc.get_freeze_count()
    print(f"  objects the GC tracks      {base_objects:,} at rest, {inflight_objects:,} with all in flight"
          + (f" (+{frozen:,} frozen)" if frozen else ""))
    for generation, pauses in sorted(collections.pauses.items()):
        print(f"  GC generation {generation}: {len(pauses)} collections, max {max(pauses):.1f} ms, "
              f"total {sum(pauses) / 1000:.2f} s ({collections.cpu[generation]:.2f} s of CPU)")
    lag_ok = ticker.pct("in flight", 0.99) < args.lag_target_ms
    rss_ok = peak_rss < args.rss_target_mib
    print(f"  targets: RSS < {args.rss_target_mib} MiB {'met' if rss_ok else 'MISSED'}; "
          f"lag p99 (all in flight) < {args.lag_target_ms} ms {'met' if lag_ok else 'MISSED'}")
    return 0 if lost == 0 and statuses["succeeded"] == jobs else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=80, help="Status polls before a prediction finishes.")
    parser.add_argument("--poll-interval", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=100, help="Creates sent at once.")
    parser.add_argument("--tick", type=float, default=0.05, help="The lag ticker's sleep, seconds.")
    parser.add_argument("--timeout", type=float, default=1800, help="Give up after this many seconds.")
    parser.add_argument("--gc-young-threshold", type=int, default=Settings().gc_young_threshold,
                        help="GENPLANE_GC_YOUNG_THRESHOLD for the run; 0: Python's defaults.")
    parser.add_argument("--rss-target-mib", type=float, default=1024)
    parser.add_argument("--lag-target-ms", type=float, default=100)
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
