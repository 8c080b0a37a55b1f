"""1,000 generations, each reported by webhook to a real receiver: nothing lost, how fast.

Run: ``.venv/bin/python bench/webhooks.py [--generations 1000] [--concurrency 64]
[--image-side 512] [--without-webhooks] [--profile]``

One genplane app (SQLite, the real worker with the local provider, the real webhook
dispatcher) runs in this process, as in the tests; the receiver is a uvicorn server on
127.0.0.1 on its own thread (``tests/webhook_receiver.py``) that counts and verifies
what arrives. Every generation must produce a ``generation.started`` and a
``generation.completed`` delivery; the run reports how long creating, finishing and
delivering took, how many requests the receiver saw, and any event lost or
delivered twice under two ids (both must be 0). ``--without-webhooks`` runs the same
generations with no endpoint, the baseline the webhooks' cost is measured against;
``--image-side`` shrinks the local provider's previews (rendering dominates otherwise).
tests/test_webhooks.py runs the same check with 200 generations.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.webhook_receiver import Receiver, verified_payload  # noqa: E402

from genplane.accounts import service as accounts  # noqa: E402
from genplane.accounts.scopes import parse_scopes  # noqa: E402
from genplane.api.app import create_app  # noqa: E402
from genplane.credits.money import to_millis  # noqa: E402
from genplane.db.models import Generation, WebhookDelivery  # noqa: E402
from genplane.logs import configure_logging  # noqa: E402
from genplane.settings import Settings  # noqa: E402
from genplane.webhooks.endpoints import add_endpoint  # noqa: E402

EVENTS = ("generation.started", "generation.completed")


async def run(generations: int, concurrency: int, webhooks: bool = True, image_side: int = 512) -> int:
    configure_logging("WARNING")
    receiver = Receiver()
    receiver.start()
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(
            data_dir=Path(scratch) / "data",
            worker_concurrency=concurrency,
            webhook_concurrency=concurrency,
            max_inflight_generations=generations,
            rate_limit_per_minute=100 * generations,
            webhook_allow_hosts=["127.0.0.1"],
            webhook_retry_schedule_seconds=[0.05] * 20,
            webhook_poll_interval_seconds=0.02,
            log_level="WARNING",
        )
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
        try:
            svc = app.state.services
            svc.providers["local"].image_long_side = image_side
            db = svc.db
            account = await accounts.create_account(db, "bench", credits_millis=to_millis(generations))
            issued = await accounts.create_key(
                db, settings, account.id, "bench", parse_scopes("full_access", None)
            )
            secret = ""
            if webhooks:
                created_endpoint = await add_endpoint(
                    db, settings, svc.webhooks.guard, account.id, receiver.url
                )
                secret = created_endpoint.secret
            headers = {"Authorization": f"Bearer {issued.key}"}
            body = {"generation_prompt": "a red fox"}
            start = time.perf_counter()

            async def create(_: int) -> str:
                r = await client.post("/v1/generate/image/local/preview-image", json=body, headers=headers)
                r.raise_for_status()
                return str(r.json()["data"]["generation_id"])

            ids: list[str] = []
            for offset in range(0, generations, 100):
                batch = range(offset, min(generations, offset + 100))
                ids += await asyncio.gather(*(create(i) for i in batch))
            created = time.perf_counter() - start

            finished = delivered = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                if finished is None:
                    async with db.read() as s:
                        active = await s.scalar(
                            select(func.count())
                            .select_from(Generation)
                            .where(Generation.status.in_(("pending", "processing")))
                        )
                    if not active:
                        finished = time.perf_counter() - start
                        if not webhooks:
                            break
                if len({r.delivery_id for r in receiver.delivered()}) >= len(EVENTS) * generations:
                    async with db.read() as s:
                        pending = await s.scalar(
                            select(func.count())
                            .select_from(WebhookDelivery)
                            .where(WebhookDelivery.status == "pending")
                        )
                    if not pending and finished is not None:
                        delivered = time.perf_counter() - start
                        break
        finally:
            await client.aclose()
            await lifespan.__aexit__(None, None, None)
            receiver.stop()

    by_event: dict[tuple[str, str], set[str]] = defaultdict(set)
    by_delivery: dict[str, set[tuple[str, str]]] = defaultdict(set)
    bad_signatures = 0
    for r in receiver.delivered():
        try:
            payload = verified_payload(r, secret)
        except ValueError:
            bad_signatures += 1
            continue
        key = (payload["webhook_event"], payload["webhook_data"]["generation_id"])
        by_event[key].add(r.delivery_id)
        by_delivery[r.delivery_id].add(key)
    expected = {(event, gid) for gid in ids for event in EVENTS}
    lost = len(expected - set(by_event))
    unexpected = len(set(by_event) - expected)
    twice_new_id = sum(1 for v in by_event.values() if len(v) > 1)
    mixed_ids = sum(1 for v in by_delivery.values() if len(v) > 1)
    requests = len(receiver.hooks())
    print(
        f"webhooks: {generations} generations, {len(expected)} events, "
        f"worker and dispatcher concurrency {concurrency}, one process"
    )
    print(f"  created all in                 {created:7.2f} s")
    print(f"  all generations terminal after {finished or float('nan'):7.2f} s")
    print(f"  all events delivered after     {delivered or float('nan'):7.2f} s")
    print(f"  requests the receiver answered {requests:7d} ({requests - len(by_delivery)} repeats)")
    print(f"  events lost                    {lost:7d}")
    print(f"  events delivered under 2+ ids  {twice_new_id:7d}")
    print(f"  unexpected / bad signatures    {unexpected + mixed_ids:7d} / {bad_signatures}")
    ok = delivered is not None and not (lost or unexpected or twice_new_id or mixed_ids or bad_signatures)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--without-webhooks", action="store_true", help="No endpoint: the same run's baseline."
    )
    parser.add_argument(
        "--image-side", type=int, default=512, help="Long side of the local provider's images."
    )
    parser.add_argument("--profile", action="store_true", help="Print the 30 costliest functions.")
    args = parser.parse_args()
    job = run(args.generations, args.concurrency, not args.without_webhooks, args.image_side)
    if not args.profile:
        return asyncio.run(job)
    profiler = cProfile.Profile()
    code: int = profiler.runcall(asyncio.run, job)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return code


if __name__ == "__main__":
    sys.exit(main())
