"""1,000 video jobs in flight at once in one process, each polling a fake provider.

Run: ``.venv/bin/python bench/inflight.py [--jobs 1000] [--polls 80] [--poll-interval 0.25]``

One genplane app (SQLite, the real worker, the real Replicate adapter) runs in this
process; its network is the fake Replicate of tests/fakes, served in-process, whose
predictions stay "starting"/"processing" for ``--polls`` status polls before they
succeed with an MP4 at an expiring URL. All jobs are created first, so all are in flight
together; the run then waits until every one is terminal and reports how long that
took, what became of each job, and the process's memory: no job may be lost and the
memory must stay bounded (it is reported as peak RSS and per in-flight job).
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
from pathlib import Path

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


async def run(jobs: int, polls: int, poll_interval: float) -> int:
    configure_logging("WARNING")
    # One small MP4 for every prediction: the benchmark measures genplane, not PyAV.
    clip = fake_replicate.mp4_bytes()
    fake_replicate.mp4_bytes = functools.partial(lambda data: data, clip)  # type: ignore[assignment]
    network = FakeNetwork()
    provider = fake_replicate.FakeReplicate(
        queued_polls=polls // 2, running_polls=polls - polls // 2, video=True
    )
    provider.install(network)
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
            worker_concurrency=jobs,
            max_inflight_generations=jobs,
            rate_limit_per_minute=10 * jobs,
            video_attempt_deadline_seconds=600,
            log_level="WARNING",
        )
        app = create_app(settings, transport=network)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
        try:
            db = app.state.services.db
            account = await accounts.create_account(db, "bench", credits_millis=to_millis(jobs))
            scopes = parse_scopes("full_access", None)
            issued = await accounts.create_key(db, settings, account.id, "bench", scopes)
            headers = {"Authorization": f"Bearer {issued.key}"}
            gc.collect()
            base_rss = rss_mib()
            body = {"generation_prompt": "waves", "generation_duration": 5}
            start = time.perf_counter()

            async def create(_: int) -> str:
                r = await client.post(f"/v1/generate/video/{MODEL}", json=body, headers=headers)
                r.raise_for_status()
                return str(r.json()["data"]["generation_id"])

            ids: list[str] = []
            for offset in range(0, jobs, 100):
                ids += await asyncio.gather(*(create(i) for i in range(offset, min(jobs, offset + 100))))
            created = time.perf_counter() - start
            peak_rss, peak_inflight = rss_mib(), 0
            worker = app.state.services.worker
            statuses: Counter[str] = Counter()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                peak_rss = max(peak_rss, rss_mib())
                peak_inflight = max(peak_inflight, worker.in_flight)
                async with db.read() as s:
                    rows = (await s.execute(
                        select(Generation.status, func.count()).group_by(Generation.status)
                    )).all()
                statuses = Counter({status: int(n) for status, n in rows})
                if statuses["pending"] + statuses["processing"] == 0:
                    break
            elapsed = time.perf_counter() - start
        finally:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)

    lost = jobs - statuses["succeeded"] - statuses["failed"] - statuses["canceled"]
    print(f"in-flight video jobs: {jobs} jobs, {polls} polls each every {poll_interval} s, one process")
    print(f"  created all in             {created:7.2f} s")
    print(f"  all terminal after         {elapsed:7.2f} s")
    print(f"  peak jobs running at once  {peak_inflight:7d}")
    print(f"  outcome                    {dict(statuses)}  (lost: {lost})")
    print(f"  provider polls answered    {provider.polls:7d}")
    print(f"  RSS before / peak          {base_rss:7.1f} / {peak_rss:.1f} MiB "
          f"({(peak_rss - base_rss) * 1024 / jobs:.1f} KiB per in-flight job)")
    return 0 if lost == 0 and statuses["succeeded"] == jobs else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=80, help="Status polls before a prediction finishes.")
    parser.add_argument("--poll-interval", type=float, default=0.25)
    args = parser.parse_args()
    return asyncio.run(run(args.jobs, args.polls, args.poll_interval))


if __name__ == "__main__":
    sys.exit(main())
