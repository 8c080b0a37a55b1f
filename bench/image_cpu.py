"""CPU per image of genplane's worker path: claim -> provider call -> decode -> store -> succeed.

Run: ``.venv/bin/python bench/image_cpu.py [--images 1000] [--formats png,jpg,webp]
[--concurrency 64] [--rounds 3] [--profile] [--webhook] [--provider selfhosted|local]
[--latency 0]``

The upstream is ``bench/fake_images_upstream.py``, a fake OpenAI-compatible images server in
its own process (its CPU is counted nowhere): ``POST /v1/images/generations`` answers
at once with the same ~20 KB PNG (seeded noise, so it does not compress) as
``data[0].b64_json``. genplane runs in this process
as ``genplane serve`` would (SQLite in a fresh data directory, uvloop, log level WARNING)
with ``selfhosted/sdxl`` served by the ``selfhosted`` adapter (OpenAI-compatible images
protocol) pointed at the fake.

For each requested output format (``png``: the provider's own format, stored as sent;
``jpg``/``webp``: re-encoded) and each round:

1. a fresh app is started with its worker stopped, and ``--images`` generations are
   created over HTTP (in-process ASGI), so they all wait in the worker's queue;
2. the worker is started and the process's CPU time (``time.process_time()``: every
   thread, so the re-encoding threads too) is measured until every job has ended;
3. a baseline makes the same upstream calls directly with an httpx client built like the
   worker's (same limits, same concurrency), reading each answer whole.

Printed per format: genplane's worker CPU per image, the baseline's, and their
difference (what genplane itself adds per image), as the median of the rounds.

``--profile`` adds one more pass per format under cProfile and prints where the worker's
main-thread CPU goes, by stage (cumulative time of the functions that make up a job) and
by library (self time grouped by module). cProfile slows Python code down about twice, so
the shares are what to read; each share is also shown scaled to the unprofiled CPU per
image. Re-encoding runs in worker threads, which cProfile does not see: its cost is
measured directly and printed on its own line.

``--latency S`` makes the fake take S seconds per image, to see how many jobs run at once
(``--concurrency 0``: the default, which follows the in-flight cap; this script sets the
cap to the number of images), the images per second and the memory the running jobs hold.

``--webhook`` subscribes a webhook endpoint to every event first, so each job also writes
outbox rows (a started and a completed event and their deliveries; nothing is delivered,
the dispatcher is not running). ``--provider local`` uses ``local/preview-image``
instead (no HTTP at all; the render itself is then most of the cost).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import platform
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_images_upstream import fixed_png

PROMPT = "a lighthouse at dusk"


def start_upstream(latency: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fake_images_upstream.py")), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError(f"the fake upstream did not start: {line!r}")
    port = int(line.split()[1])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the fake upstream is not listening")


# -- genplane in this process ----------------------------------------------------------------


@dataclass
class Pass:
    images: int
    worker_cpu: float  # seconds, whole process, while the worker ran the jobs
    wall: float
    statuses: dict[str, int]
    peak_running: int = 0  # jobs running at once, at most
    rss_before: float = 0.0  # MiB, the process's resident memory when the worker started
    rss_peak: float = 0.0  # MiB, the most seen while it ran


def rss_mib() -> float:
    """Current resident memory of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _gather_bounded(calls: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def genplane_pass(
    port: int,
    fmt: str,
    images: int,
    concurrency: int | None,
    provider: str,
    webhook: bool,
    profile: cProfile.Profile | None = None,
    measure_memory: bool = False,
) -> Pass:
    import httpx
    from sqlalchemy import func, select

    from genplane.accounts import service as accounts
    from genplane.accounts.scopes import parse_scopes
    from genplane.api.app import create_app
    from genplane.credits.money import to_millis
    from genplane.db.models import Generation
    from genplane.settings import Settings

    model = "selfhosted/sdxl" if provider == "selfhosted" else "local/preview-image"
    with tempfile.TemporaryDirectory() as scratch:
        values: dict[str, Any] = {
            "data_dir": Path(scratch) / "data",
            "public_base_url": "http://127.0.0.1:8000",
            "selfhosted_base_url": f"http://127.0.0.1:{port}",
            "selfhosted_protocol": "openai",
            "run_worker": False,  # started below, once every job waits in its queue
            "rate_limit_per_minute": 100_000_000,
            "max_inflight_generations": images + 10,
            "log_level": "WARNING",
            "webhook_allow_hosts": ["127.0.0.1"],
        }
        if concurrency is not None:
            values["worker_concurrency"] = concurrency
        settings = Settings(**values)
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
        svc = app.state.services
        try:
            account = await accounts.create_account(svc.db, "bench", credits_millis=to_millis(images * 10))
            issued = await accounts.create_key(
                svc.db, settings, account.id, "bench", parse_scopes("full_access", None)
            )
            if webhook:
                from genplane.net.fetch import PinnedFetcher
                from genplane.webhooks.endpoints import add_endpoint

                guard = PinnedFetcher(svc.http, settings.webhook_allow_hosts)
                await add_endpoint(svc.db, settings, guard, account.id, "http://127.0.0.1:9/hook")
            headers = {"Authorization": f"Bearer {issued.key}"}
            body = {"generation_prompt": PROMPT, "generation_output_format": fmt}

            async def create() -> str:
                r = await client.post(f"/v1/generate/image/{model}", json=body, headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"create answered {r.status_code}: {r.text[:300]}")
                return str(r.json()["data"]["generation_id"])

            ids = await _gather_bounded([create] * images, 32)
            worker = svc.worker  # not started: every job waits, pending, for it

            gc.collect()
            rss_before = rss_peak = rss_mib()
            peak_running = 0
            if profile is not None:
                profile.enable()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await worker.start()
            for gid in ids:  # at once, rather than 500 a sweep
                worker.enqueue(gid)
            while worker._queue.qsize() or worker.in_flight:
                peak_running = max(peak_running, worker.in_flight)
                if measure_memory:
                    rss_peak = max(rss_peak, rss_mib())
                await asyncio.sleep(0.01)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            if profile is not None:
                profile.disable()
            await worker.stop()
            async with svc.db.read() as s:
                rows = (
                    await s.execute(select(Generation.status, func.count()).group_by(Generation.status))
                ).all()
            statuses = {str(status): int(n) for status, n in rows}
        finally:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)
    return Pass(images, cpu1 - cpu0, wall1 - wall0, statuses, peak_running, rss_before, rss_peak)


async def baseline_pass(port: int, images: int, concurrency: int) -> Pass:
    """The same upstream calls, made directly with a client built like the worker's."""
    from genplane.providers.registry import build_http_client
    from genplane.settings import Settings

    settings = Settings(data_dir=Path(tempfile.gettempdir()) / "unused")
    client = build_http_client(settings)
    url = f"http://127.0.0.1:{port}/v1/images/generations"
    fields = {"model": "sdxl", "prompt": PROMPT, "n": 1, "size": "1024x1024", "response_format": "b64_json"}
    ok = 0

    async def call() -> None:
        nonlocal ok
        r = await client.post(url, json=fields, headers={"Authorization": "Bearer sk-bench"})
        r.raise_for_status()
        ok += len(r.content) > 0

    try:
        await call()  # the connection pool warmed, as the worker's is after its first call
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await _gather_bounded([call] * images, concurrency)
        cpu1, wall1 = time.process_time(), time.perf_counter()
    finally:
        await client.aclose()
    return Pass(images, cpu1 - cpu0, wall1 - wall0, {"ok": ok - 1})


# -- the profile, read -----------------------------------------------------------------------

# (label, file suffix, function name): cumulative time of these, per stage of a job.
STAGES: list[tuple[str, str, str]] = [
    ("job total (Worker._run)", "jobs/worker.py", "_run"),
    ("  claim (lifecycle.claim: UPDATE, row, started event)", "generations/lifecycle.py", "claim"),
    ("  provider call (adapter submit: HTTP, JSON, base64)", "providers/selfhosted.py", "submit"),
    ("    HTTP request/response (ProviderHttp.send)", "providers/http.py", "send"),
    ("    JSON decode (ProviderHttp.decode)", "providers/http.py", "decode"),
    ("    base64 decode", "providers/outputs.py", "decode_base64"),
    ("  note prediction (transaction)", "jobs/worker.py", "_note_prediction"),
    ("  output check/format (in_requested_format)", "jobs/media.py", "in_requested_format"),
    ("  store (Worker._store)", "jobs/worker.py", "_store"),
    ("  succeed (lifecycle.succeed: UPDATE, settle, event)", "generations/lifecycle.py", "succeed"),
    ("    settle (flag + ledger row)", "generations/lifecycle.py", "_settle"),
    ("    terminal event (_emit_terminal)", "generations/lifecycle.py", "_emit_terminal"),
    ("  outbox emit (webhooks.outbox.emit, all events)", "webhooks/outbox.py", "emit"),
    ("  attempt record (repository.record_attempt)", "generations/repository.py", "record_attempt"),
    ("  transactions' begin/commit (Database.write)", "db/engine.py", "write"),
    ("  orphan-file check (Worker._drop_files)", "jobs/worker.py", "_drop_files"),
    ("sweep (Worker.sweep, periodic)", "jobs/worker.py", "sweep"),
]

# Self time grouped by where the code lives (first match wins).
LIBRARIES: list[tuple[str, tuple[str, ...]]] = [
    ("genplane", ("/genplane/",)),
    ("SQLAlchemy", ("/sqlalchemy/",)),
    ("sqlite3 / aiosqlite", ("sqlite3", "aiosqlite")),
    ("httpx / httpcore / h11 / anyio", ("/httpx/", "/httpcore/", "/h11/", "/anyio/", "/sniffio/")),
    ("structlog / logging", ("/structlog/", "/logging/")),
    ("Pillow", ("/PIL/",)),
    ("obstore", ("obstore",)),
    ("asyncio / uvloop", ("/asyncio/", "uvloop", "_asyncio")),
    ("JSON (orjson, json)", ("orjson", "/json/", "_json")),
    ("base64 / binascii", ("base64", "binascii")),
    ("pydantic", ("pydantic",)),
]


def _group(filename: str, name: str) -> str:
    where = f"{filename}:{name}"
    for label, needles in LIBRARIES:
        if any(n in where for n in needles):
            return label
    return "other (stdlib, builtins)"


def read_profile(profile: cProfile.Profile, images: int, cpu_per_image_ms: float) -> list[str]:
    stats = pstats.Stats(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in raw.values())
    cumulative: dict[tuple[str, str], float] = defaultdict(float)
    by_library: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, tt, ct, _callers) in raw.items():
        cumulative[(filename, name)] += ct
        by_library[_group(filename, name)] += tt

    def cum(suffix: str, name: str) -> float:
        return sum(v for (f, n), v in cumulative.items() if n == name and f.endswith(suffix))

    scale = cpu_per_image_ms / (total / images * 1000) if total else 0.0
    lines = [f"  profiled main-thread CPU {total / images * 1000:.2f} ms/image under cProfile "
             f"(x{1 / scale if scale else 0:.1f} of unprofiled); shares, and ms/image scaled to unprofiled:"]
    lines.append("  by stage (cumulative):")
    for label, suffix, name in STAGES:
        t = cum(suffix, name)
        if t:
            lines.append(f"    {label:<62} {100 * t / total:5.1f}%  {t / images * 1000 * scale:6.2f} ms")
    lines.append("  by library (self time):")
    for label, t in sorted(by_library.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {label:<62} {100 * t / total:5.1f}%  {t / images * 1000 * scale:6.2f} ms")
    lines.append("  top functions (self time):")
    top = sorted(raw.items(), key=lambda kv: -kv[1][2])[:15]
    for (filename, line, name), (_cc, nc, tt, _ct, _callers) in top:
        short = filename.split("site-packages/")[-1].split("/src/")[-1]
        lines.append(f"    {100 * tt / total:5.1f}%  {nc / images:6.1f} calls/image  {short}:{line}({name})")
    return lines


def reencode_cost_ms(fmt: str, repeat: int = 200) -> float | None:
    """CPU of re-encoding the fake's PNG into ``fmt`` once, measured directly (threads
    are invisible to cProfile)."""
    try:
        from genplane.jobs.media import _reencode
    except ImportError:
        return None
    import inspect

    png = fixed_png()
    args = (png, fmt, "png")[: len(inspect.signature(_reencode).parameters)]
    start = time.process_time()
    for _ in range(repeat):
        _reencode(*args)
    return (time.process_time() - start) / repeat * 1000


def default_concurrency(images: int) -> int:
    """The worker's concurrency when it is not set, with the in-flight cap this script sets."""
    from genplane.settings import Settings

    settings = Settings(data_dir=Path(tempfile.gettempdir()), max_inflight_generations=images + 10)
    try:
        from genplane.jobs.worker import concurrency
    except ImportError:  # before the default followed the cap
        return int(settings.worker_concurrency or 16)
    return concurrency(settings)


# -- main -------------------------------------------------------------------------------------


def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Awaitable[Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--formats", default="png,jpg,webp", help="Requested output formats.")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="GENPLANE_WORKER_CONCURRENCY and the baseline's concurrency "
                             "(0: the setting's default, which follows the in-flight cap: "
                             "this script sets it to the number of images).")
    parser.add_argument("--rounds", type=int, default=3, help="Measured passes per format (median).")
    parser.add_argument("--profile", action="store_true", help="One more pass per format under cProfile.")
    parser.add_argument("--profile-out", help="Also dump each format's pstats to PREFIX-<format>.pstats.")
    parser.add_argument("--webhook", action="store_true", help="Subscribe a webhook endpoint first.")
    parser.add_argument("--provider", choices=("selfhosted", "local"), default="selfhosted")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="Seconds the fake takes per image; with it, the jobs running at once "
                             "and the memory they hold are reported too.")
    args = parser.parse_args()

    import uvloop

    from genplane.logs import configure_logging

    configure_logging("WARNING")
    concurrency = args.concurrency or None
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    proc, port = start_upstream(args.latency)
    load_before = os.getloadavg()
    print(f"genplane worker CPU per image: {args.images} images per pass, {args.rounds} rounds, "
          f"worker concurrency {concurrency or 'default'}, provider {args.provider}, "
          f"upstream latency {args.latency:g} s"
          f"{', webhook endpoint subscribed' if args.webhook else ''}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}")
    print(f"the fake's PNG: {len(fixed_png())} bytes")
    try:
        base_conc = concurrency or default_concurrency(args.images)
        baselines = [run(uvloop.new_event_loop, baseline_pass(port, args.images, base_conc))
                     for _ in range(args.rounds)]
        base_ms = statistics.median(b.worker_cpu for b in baselines) / args.images * 1000
        print(f"baseline (direct httpx calls, concurrency {base_conc}): {base_ms:.2f} ms CPU per image "
              f"(rounds: {', '.join(f'{b.worker_cpu / b.images * 1000:.2f}' for b in baselines)})")
        for fmt in formats:
            passes = []
            for _ in range(args.rounds):
                done = run(uvloop.new_event_loop, genplane_pass(
                    port, fmt, args.images, concurrency, args.provider, args.webhook,
                    measure_memory=args.latency > 0))
                if done.statuses.get("succeeded") != args.images:
                    raise RuntimeError(f"not every job succeeded: {done.statuses}")
                passes.append(done)
            per_image = statistics.median(p.worker_cpu for p in passes) / args.images * 1000
            rate = statistics.median(p.images / p.wall for p in passes)
            added = per_image - (base_ms if args.provider == "selfhosted" else 0.0)
            print(f"\n[{fmt}] worker CPU {per_image:.2f} ms/image (rounds: "
                  f"{', '.join(f'{p.worker_cpu / p.images * 1000:.2f}' for p in passes)}), "
                  f"{rate:.0f} images/s; minus the baseline: {added:.2f} ms/image added by genplane")
            if args.latency > 0:
                p = passes[len(passes) // 2]
                grown = p.rss_peak - p.rss_before
                print(f"  jobs running at once: at most {p.peak_running}; resident memory "
                      f"{p.rss_before:.0f} MiB before the worker started, {p.rss_peak:.0f} MiB at most "
                      f"(+{grown:.1f} MiB, {grown * 1024 / max(p.peak_running, 1):.1f} KiB per running job)")
            if fmt != "png":
                cost = reencode_cost_ms(fmt)
                if cost is not None:
                    print(f"  of which re-encoding PNG -> {fmt} (Pillow, measured alone): "
                          f"{cost:.2f} ms/image")
            if args.profile:
                profile = cProfile.Profile()
                run(uvloop.new_event_loop, genplane_pass(
                    port, fmt, args.images, concurrency, args.provider, args.webhook, profile))
                if args.profile_out:
                    profile.dump_stats(f"{args.profile_out}-{fmt}.pstats")
                print("\n".join(read_profile(profile, args.images, per_image)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
