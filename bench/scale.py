"""End to end, one embedded process against a scaled-out layout, on the same machine.

(a) ``genplane serve``: one process, SQLite, the worker inside.
(b) ``genplane serve --workers 2`` with ``GENPLANE_RUN_WORKER=false`` and two
    ``genplane worker`` processes, on PostgreSQL and Redis.

Both generate through the OpenAI adapter against a zero-latency fake of OpenAI's images
API on loopback (``fake_images_upstream.py``: the same 20 KB PNG at once), so what is
measured is genplane's own work per image, not a provider's rendering. ``--clients``
clients each loop: create a generation, then hold one ``GET /v1/content/{id}`` with
``Prefer: wait=60`` until it is terminal (no polling), for ``--duration`` seconds.
Printed: completed generations/s, create latency p50/p99, and the dispatch delay (a
created job's ``started_at`` minus its ``created_at``, read from the database) of
sequential creates on idle workers.

    .venv/bin/python bench/scale.py [--duration 20] [--clients 32]
        [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from image_cpu import start_upstream
from loadgen import build_request
from peer_litellm import cpu_seconds
from throughput import BIN, free_port, genplane_env, prepare_genplane, wait_for_port

BODY = json.dumps({"generation_prompt": "a lighthouse at dusk"}).encode()
CREATE = "/v1/generate/image/selfhosted/sdxl"
#: Reads the dispatch delays (ms) of the given generation ids from the layout's database.
DispatchReader = Callable[[list[str]], Awaitable[list[float]]]


@dataclass
class Outcome:
    name: str
    completed: int = 0
    seconds: float = 0.0
    create_ms: list[float] = field(default_factory=list)
    dispatch_ms: list[float] = field(default_factory=list)
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per component, load window

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return int(head[9:12]), (await reader.readexactly(length) if length else b"")


async def drive(port: int, key: str, clients: int, duration: float, outcome: Outcome) -> None:
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    stop_at = time.perf_counter() + duration

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                status, body = await exchange(reader, writer, build_request("POST", CREATE, auth, BODY))
                if status != 200:
                    outcome.errors += 1
                    continue
                outcome.create_ms.append((time.perf_counter() - started) * 1000)
                gid = json.loads(body)["data"]["generation_id"]
                wait = build_request("GET", f"/v1/content/{gid}", {**auth, "Prefer": "wait=60"})
                status, body = await exchange(reader, writer, wait)
                if status == 200 and json.loads(body)["data"]["generation_status"] == "succeeded":
                    if time.perf_counter() <= stop_at:
                        outcome.completed += 1
                else:
                    outcome.errors += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    outcome.seconds = min(time.perf_counter(), stop_at) - began


async def sequential_creates(port: int, key: str, n: int) -> list[str]:
    """``n`` creates one at a time, each after the previous one finished: idle workers."""
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ids = []
    try:
        for _ in range(n):
            _, body = await exchange(reader, writer, build_request("POST", CREATE, auth, BODY))
            gid = json.loads(body)["data"]["generation_id"]
            held = build_request("GET", f"/v1/content/{gid}", {**auth, "Prefer": "wait=60"})
            await exchange(reader, writer, held)
            ids.append(gid)
    finally:
        writer.close()
    return ids


class StartedCounter:
    """Counts the processes that logged their start (API children and workers alike)."""

    EVENTS = (b'"genplane_started"', b'"genplane_worker_started"')

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def popen(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(BIN / "genplane"), *args], env={**env, "GENPLANE_LOG_LEVEL": "INFO"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        return proc

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if any(event in line for event in self.EVENTS):
                with self._changed:
                    self.count += 1
                    self._changed.notify_all()

    def wait(self, n: int, timeout: float = 60) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.count >= n, timeout):
                raise RuntimeError(f"only {self.count} of {n} processes started")


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def layout_env(scratch: Path, port: int, args: argparse.Namespace) -> dict[str, str]:
    env = genplane_env(scratch, port)
    env.update(
        GENPLANE_SELFHOSTED_BASE_URL=f"http://127.0.0.1:{args.upstream}",
        GENPLANE_SELFHOSTED_PROTOCOL="openai",
    )
    return env


def embedded(scratch: Path, args: argparse.Namespace) -> Outcome:
    port = free_port()
    env = layout_env(scratch / "embedded", port, args)
    key = prepare_genplane(env)
    procs = [subprocess.Popen([str(BIN / "genplane"), "serve"], env=env)]
    try:
        wait_for_port(port)
        return measure("(a) 1 embedded process, SQLite", port, key, args, sqlite_dispatch(env), procs)
    finally:
        stop_all(procs)


def sqlite_dispatch(env: dict[str, str]) -> DispatchReader:
    path = Path(env["GENPLANE_DATA_DIR"]) / "genplane.db"

    async def read(ids: list[str]) -> list[float]:
        with sqlite3.connect(path) as conn:
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"SELECT created_at, started_at FROM generations WHERE id IN ({marks})", ids
            ).fetchall()
        return [
            (datetime.fromisoformat(s) - datetime.fromisoformat(c)).total_seconds() * 1000 for c, s in rows
        ]

    return read


def scaled(scratch: Path, args: argparse.Namespace) -> Outcome:
    dsn = args.pg.replace("postgresql+asyncpg://", "postgresql://", 1)
    name = f"genplane_scale_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = f"{args.pg.rpartition('/')[0]}/{name}"
    port = free_port()
    env = layout_env(scratch / "scaled", port, args)
    env.update(
        GENPLANE_DATABASE_URL=url,
        GENPLANE_REDIS_URL=args.redis,
        GENPLANE_REDIS_PREFIX=f"scale-{uuid.uuid4().hex[:8]}:",
        GENPLANE_RUN_WORKER="false",
    )
    key = prepare_genplane(env)
    started = StartedCounter()
    procs = [started.popen(["serve", "--workers", "2"], env)]
    procs += [started.popen(["worker"], env) for _ in range(2)]
    try:
        # The port answers as soon as the parent listens; a child still importing would leave
        # every keep-alive connection of the run to the children already started.
        started.wait(4)

        async def read(ids: list[str]) -> list[float]:
            conn = await asyncpg.connect(f"{dsn.rpartition('/')[0]}/{name}")
            try:
                rows = await conn.fetch(
                    "SELECT extract(epoch FROM started_at - created_at) * 1000 AS ms "
                    "FROM generations WHERE id = ANY($1::text[])", ids,
                )
            finally:
                await conn.close()
            return [float(r["ms"]) for r in rows]

        return measure("(b) 2 API + 2 workers, PostgreSQL + Redis", port, key, args, read, procs)
    finally:
        stop_all(procs)
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def server_roots(name: str) -> list[int]:
    """Pids of the oldest processes named ``name`` (a server and not its children)."""
    found = subprocess.run(["pgrep", "-o", "-x", name], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def cpu_snapshot(genplane: list[int], args: argparse.Namespace) -> dict[str, float]:
    """CPU seconds so far of each component on the machine, whole process trees."""
    parts = {
        "genplane": genplane,
        "postgresql": server_roots("postgres"),
        "redis": server_roots("redis-server"),
        "fake provider": [args.upstream_pid],
    }
    seconds = {part: sum(cpu_seconds(pid) for pid in pids) for part, pids in parts.items()}
    own = resource.getrusage(resource.RUSAGE_SELF)  # this process only: genplane is its child
    seconds["load generator"] = own.ru_utime + own.ru_stime
    return seconds


def measure(
    name: str,
    port: int,
    key: str,
    args: argparse.Namespace,
    dispatch: DispatchReader,
    procs: list[subprocess.Popen[bytes]],
) -> Outcome:
    outcome = Outcome(name)
    asyncio.run(sequential_creates(port, key, 10))  # warm up every process's paths
    roots = [p.pid for p in procs]
    before = cpu_snapshot(roots, args)
    asyncio.run(drive(port, key, args.clients, args.duration, outcome))
    after = cpu_snapshot(roots, args)
    outcome.cpu = {part: after[part] - before[part] for part in after}
    ids = asyncio.run(sequential_creates(port, key, args.sequential))
    outcome.dispatch_ms = asyncio.run(dispatch(ids))
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sequential", type=int, default=50, help="idle-worker creates for dispatch delay")
    parser.add_argument("--only", choices=["embedded", "scaled"], help="run one layout (profiling)")
    parser.add_argument(
        "--pg", default=os.environ.get("GENPLANE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--redis", default=os.environ.get("GENPLANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} clients={args.clients} duration={args.duration}s", flush=True)
    upstream, args.upstream = start_upstream(0.0)
    args.upstream_pid = upstream.pid
    try:
        with tempfile.TemporaryDirectory() as tmp:
            layouts = {"embedded": embedded, "scaled": scaled}
            results = [run(Path(tmp), args) for name, run in layouts.items() if args.only in (None, name)]
    finally:
        upstream.kill()
    print()
    print(
        "| layout | completed/s | create p50 ms | create p99 ms | dispatch p50 ms "
        "| dispatch p99 ms | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.name} | {r.per_second:.1f} | {quantile(r.create_ms, 0.5):.1f} | "
            f"{quantile(r.create_ms, 0.99):.1f} | {quantile(r.dispatch_ms, 0.5):.1f} | "
            f"{quantile(r.dispatch_ms, 0.99):.1f} | {r.errors} |"
        )
    if len(results) == 2 and results[0].per_second:
        ratio = results[1].per_second / results[0].per_second
        print(f"\nscaled / embedded completed generations per second: {ratio:.2f}x (target >= 1.6x)")
    for r in results:
        print(f"mean dispatch {r.name}: {statistics.fmean(r.dispatch_ms):.1f} ms")
    print("\nCPU milliseconds per completed generation, by component (load window):")
    print("| layout | " + " | ".join(results[0].cpu) + " | total |")
    print("|---|" + "---:|" * (len(results[0].cpu) + 1))
    for r in results:
        per = {part: 1000 * cpu / max(r.completed, 1) for part, cpu in r.cpu.items()}
        cells = " | ".join(f"{v:.1f}" for v in per.values())
        print(f"| {r.name} | {cells} | {sum(per.values()):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
