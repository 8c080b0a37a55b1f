"""What the edge firewall costs: GET /v1/content/{id} with it on and off, in one run.

Run: ``.venv/bin/python bench/firewall.py [--duration S] [--connections N] [--rounds R]``.

Two genplane servers run side by side, exactly as ``genplane serve`` runs them (SQLite in
a fresh data directory each, the in-process worker), one with
``GENPLANE_FIREWALL_ENABLED=true`` and one with ``false``. Each polls 20 succeeded
generations with the same key-authenticated GET under the same load generator
(bench/loadgen.py); only one server is loaded at a time, and the phases alternate
(off, on, on, off, ...) so drift on the machine falls on both alike. The cost is
``1 - on/off`` of the mean requests/s.

Then, in this process, the firewall's own time per request: the middleware in front
of an app that does nothing, for the same GET and for a create with a 1 KB body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LoadResult, build_request, cycle, run_load
from throughput import BIN, free_port, genplane_env, prepare_genplane, report, succeeded_ids, wait_for_port

TARGET_COST = 0.15


def start_genplane(scratch: Path, name: str, firewall: bool) -> tuple[int, str, subprocess.Popen[bytes]]:
    port = free_port()
    env = genplane_env(scratch / name, port)
    env["GENPLANE_FIREWALL_ENABLED"] = "true" if firewall else "false"
    key = prepare_genplane(env)
    proc = subprocess.Popen([str(BIN / "genplane"), "serve"], env=env)
    return port, key, proc


def measure(port: int, key: str, ids: list[str], connections: int, duration: float) -> LoadResult:
    auth = {"Authorization": f"Bearer {key}", "User-Agent": "bench/1", "Accept": "application/json"}
    gets = [build_request("GET", f"/v1/content/{gid}", auth) for gid in ids]
    return asyncio.run(run_load(port, cycle(gets), connections, duration))


def micro(iterations: int) -> dict[str, float]:
    """Microseconds the middleware adds per request, in front of an app that does nothing."""
    from genplane.api.app import create_app
    from genplane.api.blocklist import MemoryFirewallStore, key_subject
    from genplane.api.firewall import FirewallMiddleware, compile_rules
    from genplane.api.openapi import app_spec, route_table
    from genplane.settings import Settings

    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch))
        app = create_app(settings)
        rules = compile_rules(app_spec(app), (p for p, _, _ in route_table(app)))

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "POST":
            await receive()

    token = "bye_us_" + "k" * 43
    store = MemoryFirewallStore.from_settings(settings)
    firewall = FirewallMiddleware(inner, rules, settings, store)
    common = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"user-agent", b"bench/1"),
        (b"accept", b"application/json"),
    ]
    body = json.dumps({"generation_prompt": "x" * 960}).encode()
    requests = {
        "GET /v1/content/{id}": ("GET", "/v1/content/gen_0123456789abcdef", common, b""),
        "POST /v1/generate/image (1 KB)": (
            "POST",
            "/v1/generate/image/local/preview-image",
            [*common, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            body,
        ),
    }

    async def run() -> dict[str, float]:
        await store.mark_verified(key_subject(token), "acct")
        out: dict[str, float] = {}
        for name, (method, path, headers, payload) in requests.items():

            async def receive(payload: bytes = payload) -> dict[str, Any]:
                return {"type": "http.request", "body": payload, "more_body": False}

            async def send(message: Any) -> None:
                raise AssertionError(f"the firewall answered: {message}")

            timings = []
            for app_under_test in (inner, firewall):
                start = time.perf_counter()
                for _ in range(iterations):
                    scope = {
                        "type": "http", "method": method, "path": path, "query_string": b"",
                        "headers": headers, "client": ("127.0.0.1", 50000), "root_path": "", "state": {},
                    }
                    await app_under_test(scope, receive, send)
                timings.append((time.perf_counter() - start) / iterations * 1e6)
            out[name] = timings[1] - timings[0]
        return out

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="Measured seconds per phase.")
    parser.add_argument("--connections", type=int, default=32, help="Concurrent keep-alive connections.")
    parser.add_argument("--rounds", type=int, default=3, help="Phases per server (alternating).")
    parser.add_argument("--micro-iterations", type=int, default=50_000)
    args = parser.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    results: dict[bool, list[LoadResult]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        try:
            servers: dict[bool, tuple[int, str, list[str]]] = {}
            for firewall in (False, True):
                port, key, proc = start_genplane(scratch, f"fw-{'on' if firewall else 'off'}", firewall)
                procs.append(proc)
                wait_for_port(port)
                servers[firewall] = (port, key, succeeded_ids(port, key, 20))
            order = [False, True]
            for _ in range(args.rounds):
                for firewall in order:
                    port, key, ids = servers[firewall]
                    results[firewall].append(measure(port, key, ids, args.connections, args.duration))
                order.reverse()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)

    print(f"firewall cost, {args.connections} connections, {args.rounds} x {args.duration:.0f} s per server")
    for firewall in (False, True):
        for i, result in enumerate(results[firewall]):
            report(f"firewall {'on ' if firewall else 'off'} GET content #{i + 1}", result)
    mean = {fw: sum(r.per_second for r in rs) / len(rs) for fw, rs in results.items()}
    cost = 1 - mean[True] / mean[False]
    ok = cost < TARGET_COST
    print(f"  mean: off {mean[False]:.0f} req/s, on {mean[True]:.0f} req/s; cost {cost:.1%} "
          f"(target < {TARGET_COST:.0%}: {'met' if ok else 'MISSED'})")
    errors = sum(c for rs in results.values() for r in rs for s, c in r.statuses.items() if s >= 400)
    if errors:
        print(f"  {errors} responses were errors")
    for name, micros in micro(args.micro_iterations).items():
        print(f"  firewall's own time, {name}: {micros:.1f} us per request")
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
