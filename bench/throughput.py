"""Creates/s and GET content/s of one genplane process, beside the framework's floor.

Run: ``make bench`` (or ``.venv/bin/python bench/throughput.py [--duration S] [--connections N]``).

Both servers run as separate processes on loopback under the same uvicorn stack; the load
generator (bench/loadgen.py) runs here. Each phase is measured for the same duration with
the same number of keep-alive connections. genplane runs exactly as ``genplane serve``
does: SQLite in a fresh data directory, the in-process worker rendering with the local
provider while the creates arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LoadResult, build_request, cycle, run_load

BIN = Path(sys.executable).parent
# Of the FastAPI + 1 dependency ceiling (issue: performance): the ceiling is what any route
# of one documented FastAPI app can reach, so the targets are measured against it.
TARGETS = {"get": 0.40, "list": 0.30, "create (API only)": 0.15}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def start_floor(port: int, app: str = "floor_app:app") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "uvicorn"), "--app-dir", str(Path(__file__).parent), app,
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
    )


def genplane_env(data_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GENPLANE_DATA_DIR=str(data_dir),
        GENPLANE_PORT=str(port),
        GENPLANE_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        GENPLANE_LOG_LEVEL="WARNING",
        # The benchmark measures throughput, not the per-account guards.
        GENPLANE_RATE_LIMIT_PER_MINUTE="100000000",
        GENPLANE_MAX_INFLIGHT_GENERATIONS="100000000",
    )
    return env


def prepare_genplane(env: dict[str, str]) -> str:
    """Initialise the data dir, fund the quickstart account and return its key."""
    out = subprocess.run(
        [str(BIN / "genplane"), "init", "--quickstart"], env=env, check=True, capture_output=True, text=True
    ).stdout
    account = re.search(r"account: (\S+)", out)
    key = re.search(r"^(bye_\S+)$", out, re.M)
    if not account or not key:
        raise RuntimeError(f"unexpected init output:\n{out}")
    subprocess.run(
        [str(BIN / "genplane"), "credits", "add", "--account", account.group(1), "1000000"],
        env=env, check=True, capture_output=True,
    )
    return key.group(1)


def api(
    port: int, key: str, method: str, path: str, body: dict[str, object] | None = None
) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
            data: dict[str, object] = json.loads(resp.read())["data"]
            return data
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path}: {exc.code} {exc.read().decode()}") from exc


def succeeded_ids(port: int, key: str, n: int) -> list[str]:
    ids = [
        str(api(port, key, "POST", "/v1/generate/image/local/preview-image",
                {"generation_prompt": f"bench {i}"})["generation_id"])
        for i in range(n)
    ]
    deadline = time.monotonic() + 120
    for gid in ids:
        while api(port, key, "GET", f"/v1/content/{gid}")["generation_status"] != "succeeded":
            if time.monotonic() > deadline:
                raise RuntimeError("generations did not finish")
            time.sleep(0.1)
    return ids


def report(name: str, result: LoadResult) -> None:
    codes = ", ".join(f"{code}: {count}" for code, count in sorted(result.statuses.items()))
    print(f"  {name:<34} {result.per_second:>9.0f} req/s   ({result.requests} requests; {codes})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="Measured seconds per phase.")
    parser.add_argument("--connections", type=int, default=32, help="Concurrent keep-alive connections.")
    args = parser.parse_args()

    floor_port, fastapi_port, gp_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as scratch:
        env = genplane_env(Path(scratch) / "data", gp_port)
        key = prepare_genplane(env)
        try:
            procs.append(start_floor(floor_port))
            procs.append(start_floor(fastapi_port, "fastapi_floor:app"))
            procs.append(subprocess.Popen([str(BIN / "genplane"), "serve"], env=env))
            wait_for_port(floor_port)
            wait_for_port(fastapi_port)
            wait_for_port(gp_port)
            auth = {"Authorization": f"Bearer {key}"}
            ids = succeeded_ids(gp_port, key, 20)

            floor_get = asyncio.run(run_load(
                floor_port, cycle([build_request("GET", "/json", {})]), args.connections, args.duration))
            fastapi_get = asyncio.run(run_load(
                fastapi_port, cycle([build_request("GET", "/json", auth)]), args.connections, args.duration))
            gets = [build_request("GET", f"/v1/content/{gid}", auth) for gid in ids]
            gp_get = asyncio.run(run_load(gp_port, cycle(gets), args.connections, args.duration))
            body = json.dumps({"generation_prompt": "a lighthouse at dusk"}).encode()
            create = build_request(
                "POST", "/v1/generate/image/local/preview-image",
                {**auth, "Content-Type": "application/json"}, body,
            )
            floor_create = build_request("POST", "/json", {"Content-Type": "application/json"}, body)
            floor_post = asyncio.run(run_load(
                floor_port, cycle([floor_create]),
                args.connections, args.duration))
            json_auth = {**auth, "Content-Type": "application/json"}
            fastapi_create = build_request("POST", "/json", json_auth, body)
            fastapi_post = asyncio.run(run_load(
                fastapi_port, cycle([fastapi_create]), args.connections, args.duration))
            gp_create = asyncio.run(run_load(gp_port, cycle([create]), args.connections, args.duration))
            listing = build_request("GET", "/v1/content/list?limit=20", auth)
            gp_list = asyncio.run(run_load(gp_port, cycle([listing]), args.connections, args.duration))
            # The API's own accept rate: the same server with the worker in another role, so
            # no rendering shares its core (the accepted jobs wait, pending, for a worker).
            procs[-1].terminate()
            procs[-1].wait(timeout=60)
            procs[-1] = subprocess.Popen(
                [str(BIN / "genplane"), "serve"], env={**env, "GENPLANE_RUN_WORKER": "false"}
            )
            wait_for_port(gp_port)
            gp_accept = asyncio.run(run_load(gp_port, cycle([create]), args.connections, args.duration))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)

    print(f"throughput, {args.connections} connections, {args.duration:.0f} s per phase, one process each")
    report("floor GET /json", floor_get)
    report("FastAPI+1 dep GET /json", fastapi_get)
    report("genplane GET /v1/content/{id}", gp_get)
    report("genplane GET /v1/content/list", gp_list)
    report("floor POST /json", floor_post)
    report("FastAPI+1 dep POST /json", fastapi_post)
    report("genplane POST (worker in-process)", gp_create)
    report("genplane POST (API only)", gp_accept)
    print(f"  framework ceiling: FastAPI GET {fastapi_get.per_second / floor_get.per_second:.1%}, "
          f"POST {fastapi_post.per_second / floor_post.per_second:.1%} of the floor; in-process "
          f"create {gp_create.per_second / fastapi_post.per_second:.1%} of FastAPI's POST")
    ratios = {"get": gp_get.per_second / fastapi_get.per_second,
              "list": gp_list.per_second / fastapi_get.per_second,
              "create (API only)": gp_accept.per_second / fastapi_post.per_second}
    failed = False
    for name, ratio in ratios.items():
        ok = ratio >= TARGETS[name]
        failed |= not ok
        print(f"  {name:<17} {ratio:6.1%} of FastAPI's  target >= {TARGETS[name]:.0%}  "
              f"{'met' if ok else 'MISSED'}")
    phases = (gp_get, gp_list, gp_create, gp_accept)
    errors = sum(c for r in phases for s, c in r.statuses.items() if s >= 400)
    if errors:
        print(f"  {errors} genplane responses were errors")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
