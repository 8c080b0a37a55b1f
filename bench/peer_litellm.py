"""genplane beside LiteLLM's proxy, both serving image generation from the same fake upstream.

Run: ``.venv/bin/python bench/peer_litellm.py [--quick] [--wait | --poll] [--reinstall]``

LiteLLM (``litellm==1.110.2`` with its ``proxy`` extra's dependencies) is installed into
``bench/.venv-litellm`` by this script on first use. Both gateways run as one server
process each, on loopback, in front of one fake OpenAI-compatible images server
(``fake_images_upstream.py``, its own process) that answers ``POST
/v1/images/generations`` after a fixed delay with the same ~20 KB PNG as ``b64_json``.
genplane serves ``selfhosted/sdxl`` through its ``selfhosted`` adapter (the OpenAI-compatible
images protocol) pointed at the fake;
LiteLLM serves ``gpt-image-1`` as ``openai/gpt-image-1`` with ``api_base`` the fake.

Phase 1, zero-latency upstream: requests/s of LiteLLM's ``POST /v1/images/generations``
(which holds the request until the upstream answered) and of genplane's create
(``POST /v1/generate/image/selfhosted/sdxl``, answered once the job is accepted, the
in-process worker calling the upstream meanwhile), same raw-socket load generator
(``loadgen.py``), same keep-alive connections.

Phase 2, 2 s upstream, 200 concurrent clients, each in a loop making one image after the
other: directly against the fake (the baseline), through LiteLLM (one held POST per
image), through genplane (create, then ``GET /v1/content/{id}`` every 0.5 s until
terminal; and/or create, then ``GET`` with ``Prefer: wait=30`` until terminal). Images/s,
end-to-end latency and the latency added over the direct call, the gateway's CPU seconds
per 1,000 images and its peak RSS. Every gateway is started fresh for each measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from loadgen import LoadResult, build_request, cycle, run_load  # noqa: E402
from throughput import BIN, genplane_env, prepare_genplane  # noqa: E402

LITELLM_VERSION = "1.110.2"
LITELLM_VENV = BENCH / ".venv-litellm"
# The proxy extra pins these to releases the package index may not have: newest available instead.
UNPINNED = {"litellm-proxy", "litellm-proxy-extras", "litellm-enterprise"}
WITHDRAWN = "!=1.107.*"  # withdrawn litellm releases, never to be picked for litellm-proxy
MASTER_KEY = "sk-bench-litellm-0000"
GENPLANE_MODEL = "selfhosted/sdxl"
LITELLM_MODEL = "gpt-image-1"
PROMPT = "a lighthouse at dusk"
TERMINAL = {"succeeded", "failed", "canceled"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {"rps_ratio": 3.0, "cpu_ratio": 1 / 3}


# -- LiteLLM's virtualenv -------------------------------------------------------------------

# Run in LiteLLM's venv: the requirements its "proxy" extra adds, for this interpreter and platform.
_PROXY_EXTRA = """
import importlib.metadata as md
from packaging.requirements import Requirement
unpinned = set(%r)
for line in md.requires("litellm") or []:
    req = Requirement(line)
    marker = req.marker
    if marker is None or marker.evaluate({"extra": ""}) or not marker.evaluate({"extra": "proxy"}):
        continue
    print(req.name if req.name in unpinned else f"{req.name}{req.specifier}")
"""


def _pip(python: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def ensure_litellm(reinstall: bool) -> list[str]:
    """Install litellm and its proxy extra into bench/.venv-litellm once; the notes of the install."""
    stamp = LITELLM_VENV / f".bench-installed-{LITELLM_VERSION}"
    if stamp.exists() and not reinstall:
        return stamp.read_text().splitlines()
    if LITELLM_VENV.exists():
        shutil.rmtree(LITELLM_VENV)
    print(f"installing litellm=={LITELLM_VERSION} and its proxy extra into {LITELLM_VENV} ...", flush=True)
    venv.EnvBuilder(with_pip=True).create(LITELLM_VENV)
    python = LITELLM_VENV / "bin" / "python"
    constraints = LITELLM_VENV / "bench-constraints.txt"
    constraints.write_text(f"litellm=={LITELLM_VERSION}\n")
    _pip(python, f"litellm=={LITELLM_VERSION}", "packaging")
    extra = subprocess.run(
        [str(python), "-c", _PROXY_EXTRA % sorted(UNPINNED)], check=True, capture_output=True, text=True
    ).stdout.split()
    notes = [
        f"proxy extra: {len(extra)} requirements; "
        f"{', '.join(sorted(UNPINNED))} taken at the newest version on the index, not the extra's pins"
    ]
    pinned_elsewhere = [r for r in extra if r not in UNPINNED]
    # httptools: the HTTP parser genplane's uvicorn uses; without it LiteLLM's uvicorn would parse
    # with h11, which is slower and would not be the same stack.
    _pip(python, "-c", str(constraints), *pinned_elsewhere, "httptools")
    for name in sorted(UNPINNED & set(extra)):
        spec = f"{name}{WITHDRAWN}" if name == "litellm-proxy" else name
        done = _pip(python, "-c", str(constraints), spec, check=False)
        if done.returncode != 0:
            reason = "not on the package index" if "No matching distribution" in done.stderr else "failed"
            why = " (the proxy itself ships in the litellm wheel)" if name == "litellm-proxy" else ""
            notes.append(f"{name}: {reason}; skipped{why}")
    stamp.write_text("\n".join(notes) + "\n")
    return notes


def litellm_versions() -> dict[str, str]:
    names = [
        "litellm",
        "litellm-proxy",
        "litellm-proxy-extras",
        "litellm-enterprise",
        "uvicorn",
        "fastapi",
        "starlette",
        "httptools",
        "uvloop",
        "openai",
        "httpx",
        "aiohttp",
    ]
    code = (
        "import importlib.metadata as m, json\nout = {}\n"
        f"for n in {names!r}:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = '-'\n"
        "print(json.dumps(out))"
    )
    out = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True
    ).stdout
    versions: dict[str, str] = json.loads(out)
    return versions


def genplane_versions() -> dict[str, str]:
    import importlib.metadata as m

    out = {}
    for name in ("genplane", "uvicorn", "fastapi", "starlette", "httptools", "uvloop", "httpx", "sqlalchemy"):
        try:
            out[name] = m.version(name)
        except m.PackageNotFoundError:
            out[name] = "-"
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "src"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    out["commit"] = rev + ("+uncommitted changes in src/" if dirty else "")
    return out


# -- a process tree's CPU time and memory, from /proc -----------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children[int(_stat_fields(int(entry))[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and its live descendants, plus the children it reaped."""
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def peak_rss_bytes(root: int) -> int:
    """Sum over the tree of each process's peak resident set (VmHWM)."""
    total = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        total += int(found.group(1)) * 1024 if found else 0
    return total


# -- a small keep-alive HTTP/1.1 client (raw asyncio streams, like loadgen.py) ----------------


@dataclass
class Tally:
    """Requests the clients sent inside the measured window, by method, and early wait answers."""

    window: tuple[float, float] = (0.0, float("inf"))
    sent: Counter[str] = field(default_factory=Counter)
    early: int = 0  # non-terminal answers to a GET with ``Prefer: wait`` well before the wait was up
    applied: Counter[str] = field(default_factory=Counter)  # "GET wait=28", "GET none": Preference-Applied

    def inside(self, at: float) -> bool:
        return self.window[0] <= at < self.window[1]


class Conn:
    """One client's keep-alive connection; reads bodies by Content-Length or chunks."""

    def __init__(self, port: int, tally: Tally | None = None) -> None:
        self.port = port
        self.tally = tally or Tally()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            reused = self.writer is not None
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**20)
            assert self.reader is not None and self.writer is not None
            if self.tally.inside(time.perf_counter()):
                self.tally.sent[method] += 1
            try:
                self.writer.write(build_request(method, path, headers, body))
                return await self._response(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt or not reused:  # a kept-alive connection the server had closed: once more
                    raise
        raise AssertionError("unreachable")

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        headers: dict[str, str] = {}
        for line in head[:-4].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        if status in (204, 304) or status < 200:
            body = b""
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body


# -- the processes ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path | None = None
    key: str = ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.proc.pid)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def start_fake(latency: float) -> Server:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "fake_images_upstream.py"), "--latency", str(latency)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    found = re.match(r"port (\d+)", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"the fake upstream did not start: {line!r}")
    return Server("fake", proc, int(found.group(1)))


async def fake_stats(fake: Server) -> dict[str, int]:
    conn = Conn(fake.port)
    try:
        status, _, body = await conn.request("GET", "/stats", {})
        if status != 200:
            raise RuntimeError(f"the fake upstream's /stats answered {status}")
        stats: dict[str, int] = json.loads(body)
        return stats
    finally:
        await conn.close()


async def fake_requests(fake: Server) -> int:
    return (await fake_stats(fake))["requests"]


async def wait_serving(
    port: int, path: str, headers: dict[str, str], proc: subprocess.Popen[bytes], timeout: float = 120.0
) -> None:
    """Until the server answers anything at all on ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} while starting")
        conn = Conn(port)
        try:
            await conn.request("GET", path, headers)
            return
        except OSError:
            await asyncio.sleep(0.1)
        finally:
            await conn.close()
    raise RuntimeError(f"nothing served on {port} after {timeout}s")


def start_genplane(
    scratch: Path, fake_port: int, worker_concurrency: int, extra_env: dict[str, str] | None = None
) -> Server:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    env = genplane_env(scratch / "data", port)
    env.update(
        GENPLANE_SELFHOSTED_BASE_URL=f"http://127.0.0.1:{fake_port}",
        GENPLANE_SELFHOSTED_PROTOCOL="openai",
        # 200 clients keep 200 jobs in flight at once; the default (16) would queue them.
        GENPLANE_WORKER_CONCURRENCY=str(worker_concurrency),
    )
    env.update(extra_env or {})
    key = prepare_genplane(env)
    log = scratch / "genplane.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "genplane"), "serve", "--fd", str(sock.fileno())],
            env=env,
            pass_fds=[sock.fileno()],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sock.close()
    server = Server("genplane", proc, port, log, key)
    try:
        asyncio.run(wait_serving(port, "/v1/content/list", server.auth(), proc))
    except Exception:
        server.stop()
        raise RuntimeError(f"genplane did not start:\n{log.read_text()[-3000:]}") from None
    return server


LITELLM_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "err": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    },
    "loggers": {
        # "Uvicorn running on ..." is how the script learns the port it bound (--port 0).
        "uvicorn": {"handlers": ["err"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        # No access log, as genplane serve has none.
        "uvicorn.access": {"handlers": ["err"], "level": "WARNING", "propagate": False},
    },
}
# Lines of LiteLLM's start-up log that would mean it tried to reach the internet.
NETWORK_SIGNS = re.compile(
    r"fetch|ConnectError|Name or service not known|Temporary failure in name resolution|"
    r"https?://(?!127\.0\.0\.1|localhost|github\.com/BerriAI/litellm/issues)",
    re.I,
)


def start_litellm(scratch: Path, fake_port: int) -> tuple[Server, list[str]]:
    config = scratch / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {LITELLM_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{LITELLM_MODEL}\n"
        f"      api_base: http://127.0.0.1:{fake_port}/v1\n"
        "      api_key: x\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    log_config = scratch / "litellm-log.json"
    log_config.write_text(json.dumps(LITELLM_LOG_CONFIG))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LITELLM_", "DATABASE_", "REDIS_", "GENPLANE_", "OPENAI_"))
        and k.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    }
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # the packaged cost map, not a download at start
        LITELLM_TELEMETRY="False",
        LITELLM_LOG="WARNING",
        LITELLM_MODE="PRODUCTION",
        DISABLE_ADMIN_UI="True",
        HOME=str(scratch),
    )
    log = scratch / "litellm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(LITELLM_VENV / "bin" / "litellm"),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--num_workers",
                "1",
                "--log_config",
                str(log_config),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=scratch,
        )
    deadline = time.monotonic() + 180
    port = None
    while port is None:
        text = log.read_text(errors="replace")
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", text)
        if found:
            port = int(found.group(1))
        elif proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"LiteLLM did not start:\n{text[-3000:]}")
        else:
            time.sleep(0.2)
    server = Server("litellm", proc, port, log, MASTER_KEY)
    startup = log.read_text(errors="replace").splitlines()
    network = [line.strip() for line in startup if NETWORK_SIGNS.search(line)]
    return server, network


# -- phase 1: requests/s with a zero-latency upstream -----------------------------------------


@dataclass
class ThroughputResult:
    name: str
    load: LoadResult
    cpu_cores: float
    upstream_per_second: float


def litellm_post() -> tuple[str, bytes]:
    return "/v1/images/generations", json.dumps(
        {"model": LITELLM_MODEL, "prompt": PROMPT, "n": 1, "size": "1024x1024"}
    ).encode()


def genplane_post() -> tuple[str, bytes]:
    return f"/v1/generate/image/{GENPLANE_MODEL}", json.dumps({"generation_prompt": PROMPT}).encode()


async def check_litellm(server: Server) -> None:
    path, body = litellm_post()
    conn = Conn(server.port)
    try:
        for _ in range(5):
            status, _, answer = await conn.request(
                "POST", path, {**server.auth(), "Content-Type": "application/json"}, body
            )
            if status != 200 or b"b64_json" not in answer:
                raise RuntimeError(f"LiteLLM answered {status}: {answer[:500]!r}")
    finally:
        await conn.close()


async def check_genplane(server: Server) -> None:
    """Five generations through the real path, each until it succeeded."""
    path, body = genplane_post()
    conn = Conn(server.port)
    auth = server.auth()
    try:
        for _ in range(5):
            status, _, answer = await conn.request(
                "POST", path, {**auth, "Content-Type": "application/json"}, body
            )
            if status not in (200, 201, 202):
                raise RuntimeError(f"genplane create answered {status}: {answer[:500]!r}")
            gid = json.loads(answer)["data"]["generation_id"]
            deadline = time.monotonic() + 60
            while True:
                status, _, answer = await conn.request("GET", f"/v1/content/{gid}", auth)
                record = json.loads(answer)["data"]
                if record["generation_status"] == "succeeded":
                    break
                if record["generation_status"] in TERMINAL or time.monotonic() > deadline:
                    raise RuntimeError(f"genplane generation did not succeed: {record}")
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def measure_throughput(
    server: Server, fake: Server, request: bytes, connections: int, duration: float
) -> ThroughputResult:
    warmup = 0.5
    load_task = asyncio.create_task(run_load(server.port, cycle([request]), connections, duration, warmup))
    await asyncio.sleep(warmup)  # the load generator counts from here on
    started = time.perf_counter()
    upstream_before, cpu_before = await fake_requests(fake), server.cpu()
    load = await load_task
    cpu_after, upstream_after = server.cpu(), await fake_requests(fake)
    seconds = time.perf_counter() - started
    return ThroughputResult(
        server.name, load, (cpu_after - cpu_before) / seconds, (upstream_after - upstream_before) / seconds
    )


# -- phase 2: 200 clients, each one image after the other -------------------------------------


@dataclass
class Image:
    start: float
    end: float
    ok: bool
    gets: int = 0


@dataclass
class ClientsResult:
    name: str
    images: list[Image]
    window: tuple[float, float]
    cpu_seconds: float | None = None
    peak_rss: int | None = None
    upstream_calls: int = 0
    upstream_peak: int = 0
    client_cpu: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    tally: Tally = field(default_factory=Tally)
    unfinished: int = 0  # images still running when the drain after the window gave up

    @property
    def duration(self) -> float:
        return self.window[1] - self.window[0]

    def completed(self) -> list[Image]:
        lo, hi = self.window
        return [i for i in self.images if i.ok and lo <= i.end < hi]

    def sample(self) -> list[Image]:
        lo, hi = self.window
        return [i for i in self.images if i.ok and lo <= i.start < hi]

    @property
    def per_second(self) -> float:
        return len(self.completed()) / self.duration

    def latency(self, q: float) -> float:
        values = sorted(i.end - i.start for i in self.sample())
        if not values:
            return float("nan")
        pos = q * (len(values) - 1)
        low = int(pos)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (pos - low)

    @property
    def gets_per_image(self) -> float:
        """Over the latency sample, or over every finished image when none started in the window."""
        sample = self.sample() or [i for i in self.images if i.ok]
        return sum(i.gets for i in sample) / len(sample) if sample else float("nan")

    @property
    def failed(self) -> int:
        lo, hi = self.window
        return sum(1 for i in self.images if not i.ok and lo <= i.start < hi)

    @property
    def cpu_per_1000(self) -> float | None:
        n = len(self.completed())
        return None if self.cpu_seconds is None or not n else self.cpu_seconds / n * 1000


OneImage = Callable[[Conn], Awaitable[int]]  # makes one image; -> the GETs it took


class Failed(Exception):
    pass


def direct_image(path: str, body: bytes, headers: dict[str, str]) -> OneImage:
    async def one(conn: Conn) -> int:
        status, _, answer = await conn.request("POST", path, headers, body)
        if status != 200 or b"b64_json" not in answer:
            raise Failed(f"HTTP {status}")
        return 0

    return one


def genplane_image(
    auth: dict[str, str], mode: str, poll_interval: float, wait_seconds: int, download: bool
) -> OneImage:
    """One image through genplane in ``mode``.

    ``poll``: create, then GET every ``poll_interval`` until terminal. ``wait``: create, then
    GET with ``Prefer: wait=N`` until terminal, with no pause between GETs (a server that
    ignores the header gets tight polling, which the tally shows). ``create-wait``: the create
    itself carries ``Prefer: wait=N``, then GETs as in ``wait`` (one, if it was honoured).
    """
    path, body = genplane_post()
    prefer = {"Prefer": f"wait={wait_seconds}"}
    create_headers = {**auth, "Content-Type": "application/json"}
    if mode == "create-wait":
        create_headers.update(prefer)
    get_headers = dict(auth) if mode == "poll" else {**auth, **prefer}
    early_under = min(1.0, wait_seconds / 2)

    async def one(conn: Conn) -> int:
        sent = time.perf_counter()
        status, headers, answer = await conn.request("POST", path, create_headers, body)
        if status not in (200, 201, 202):
            raise Failed(f"create HTTP {status}")
        if mode == "create-wait" and conn.tally.inside(sent):
            conn.tally.applied[f"POST {headers.get('preference-applied', 'none')}"] += 1
        gid = json.loads(answer)["data"]["generation_id"]
        gets = 0
        while True:
            if mode == "poll":
                await asyncio.sleep(poll_interval)
            sent = time.perf_counter()
            status, headers, answer = await conn.request("GET", f"/v1/content/{gid}", get_headers)
            gets += 1
            if status != 200:
                raise Failed(f"GET HTTP {status}")
            record = json.loads(answer)["data"]
            state = record["generation_status"]
            if mode != "poll" and conn.tally.inside(sent):
                conn.tally.applied[f"GET {headers.get('preference-applied', 'none')}"] += 1
            if state in TERMINAL:
                break
            if mode != "poll" and time.perf_counter() - sent < early_under and conn.tally.inside(sent):
                conn.tally.early += 1
        if state != "succeeded":
            raise Failed(f"generation {state}: {record.get('generation_error_name')}")
        if download:
            for url in record["generation_output_file"] or []:
                status, _, data = await conn.request("GET", "/" + url.split("/", 3)[3], auth)
                if status != 200 or len(data) < 1000:
                    raise Failed(f"download HTTP {status}")
        return gets

    return one


async def run_clients(
    name: str,
    port: int,
    one_image: OneImage,
    clients: int,
    warmup: float,
    duration: float,
    server: Server | None,
    fake: Server,
    stagger: float,
    image_timeout: float = 120.0,
) -> ClientsResult:
    start = time.perf_counter()
    window = (start + warmup, start + warmup + duration)
    images: list[Image] = []
    errors: Counter[str] = Counter()
    tally = Tally(window)

    async def client(offset: float) -> None:
        # Starts spread over one upstream latency, so that the clients do not move in lockstep
        # (all answered at the same instant, all calling again at the same instant).
        await asyncio.sleep(offset)
        conn = Conn(port, tally)
        try:
            while time.perf_counter() < window[1]:
                t0 = time.perf_counter()
                try:
                    gets = await asyncio.wait_for(one_image(conn), image_timeout)
                    images.append(Image(t0, time.perf_counter(), True, gets))
                except Exception as exc:  # each failure is counted and shown; none ends the client
                    images.append(Image(t0, time.perf_counter(), False))
                    errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    await conn.close()
                    await asyncio.sleep(0.1)  # no spinning on a refusing server
        finally:
            await conn.close()

    async def meter() -> tuple[float | None, int, int, float]:
        await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
        cpu0 = server.cpu() if server else None
        stats0, own0 = await fake_stats(fake), resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
        cpu1 = server.cpu() if server else None
        stats1, own1 = await fake_stats(fake), resource.getrusage(resource.RUSAGE_SELF)
        own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        return cpu, stats1["requests"] - stats0["requests"], stats1["peak_in_flight"], own

    tasks = [asyncio.create_task(client(i * stagger / clients)) for i in range(clients)]
    cpu, calls, peak, own = await meter()
    # Images in flight at the end of the window finish (they are in the latency sample).
    _, pending = await asyncio.wait(tasks, timeout=image_timeout + 10)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return ClientsResult(
        name,
        images,
        window,
        cpu,
        server.peak_rss() if server else None,
        calls,
        peak,
        own,
        errors,
        tally,
        len(pending),
    )


# -- output ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


def mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:,.0f} MiB"


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="Short run: 3 s phase 1, 5 s warm-up + 10 s phase 2."
    )
    parser.add_argument("--duration", type=float, help="Measured seconds of each phase-1 run (default 10).")
    parser.add_argument(
        "--clients-duration", type=float, help="Measured seconds of each phase-2 run (default 30)."
    )
    parser.add_argument("--warmup", type=float, help="Phase-2 seconds before the window opens (default 5).")
    parser.add_argument("--connections", type=int, default=32, help="Phase-1 keep-alive connections.")
    parser.add_argument("--clients", type=int, default=200, help="Phase-2 concurrent clients.")
    parser.add_argument("--latency", type=float, default=2.0, help="Phase-2 upstream latency, seconds.")
    parser.add_argument(
        "--poll-interval", type=float, default=0.5, help="genplane poll mode: seconds between GETs."
    )
    parser.add_argument("--wait-seconds", type=int, default=30, help="genplane wait mode: Prefer: wait=N.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--modes",
        default="poll,wait",
        help="genplane phase-2 modes, of poll, wait (GET with Prefer: wait) and create-wait (the create "
        "with Prefer: wait, then GET).",
    )
    mode.add_argument("--wait", action="store_true", help="genplane phase 2 with Prefer: wait only.")
    mode.add_argument("--poll", action="store_true", help="genplane phase 2 with polling only.")
    parser.add_argument(
        "--download",
        action="store_true",
        help="genplane clients also GET the stored image (LiteLLM's answer carries it).",
    )
    parser.add_argument("--worker-concurrency", type=int, default=256, help="GENPLANE_WORKER_CONCURRENCY.")
    parser.add_argument("--phases", default="1,2", help="Which phases to run: 1, 2 or 1,2.")
    parser.add_argument(
        "--paths",
        default="direct,litellm,genplane",
        help="Phase-2 paths to run (the added latency needs direct).",
    )
    parser.add_argument(
        "--genplane-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="An extra setting for genplane (repeatable), e.g. GENPLANE_ANOMALY_DETECTION_ENABLED=false.",
    )
    parser.add_argument("--reinstall", action="store_true", help="Recreate bench/.venv-litellm.")
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)
    clients_duration = args.clients_duration or (10.0 if args.quick else 30.0)
    warmup = args.warmup if args.warmup is not None else 5.0
    if warmup < args.latency:
        parser.error("--warmup must be at least --latency: the clients' starts are spread over one latency")
    phases = {p.strip() for p in args.phases.split(",")}
    paths = {p.strip() for p in args.paths.split(",")}
    extra_env = dict(item.split("=", 1) for item in args.genplane_env)
    modes = ["wait"] if args.wait else ["poll"] if args.poll else [m.strip() for m in args.modes.split(",")]
    if not set(modes) <= {"poll", "wait", "create-wait"}:
        parser.error(f"unknown mode in --modes {args.modes!r}")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    began = time.perf_counter()
    notes = ensure_litellm(args.reinstall)
    ll_versions, gp_versions = litellm_versions(), genplane_versions()
    network_lines: list[str] = []
    phase1: dict[str, ThroughputResult] = {}
    phase2: dict[str, ClientsResult] = {}

    with tempfile.TemporaryDirectory(prefix="peer-litellm-") as tmp:
        scratch = Path(tmp)
        run_no = iter(range(1000))

        def fresh() -> Path:
            path = scratch / f"run{next(run_no)}"
            path.mkdir()
            return path

        if "1" in phases:
            fake = start_fake(0.0)
            try:
                ll, network_lines = start_litellm(fresh(), fake.port)
                try:
                    asyncio.run(check_litellm(ll))
                    path, body = litellm_post()
                    request = build_request(
                        "POST", path, {**ll.auth(), "Content-Type": "application/json"}, body
                    )
                    phase1["litellm"] = asyncio.run(
                        measure_throughput(ll, fake, request, args.connections, duration)
                    )
                finally:
                    ll.stop()
                gp = start_genplane(fresh(), fake.port, args.worker_concurrency, extra_env)
                try:
                    asyncio.run(check_genplane(gp))
                    path, body = genplane_post()
                    request = build_request(
                        "POST", path, {**gp.auth(), "Content-Type": "application/json"}, body
                    )
                    phase1["genplane"] = asyncio.run(
                        measure_throughput(gp, fake, request, args.connections, duration)
                    )
                finally:
                    gp.stop()
            finally:
                fake.stop()
            print(f"phase 1 done ({time.perf_counter() - began:.0f} s)", flush=True)

        if "2" in phases:
            fake = start_fake(args.latency)
            try:
                path, body = litellm_post()
                direct = direct_image(
                    path, body, {"Content-Type": "application/json", "Authorization": "Bearer x"}
                )
                if "direct" in paths:
                    phase2["direct"] = asyncio.run(
                        run_clients(
                            "direct",
                            fake.port,
                            direct,
                            args.clients,
                            warmup,
                            clients_duration,
                            None,
                            fake,
                            args.latency,
                        )
                    )
                    print(f"phase 2: direct done ({time.perf_counter() - began:.0f} s)", flush=True)

                if "litellm" in paths:
                    ll, lines = start_litellm(fresh(), fake.port)
                    network_lines = network_lines or lines
                    try:
                        asyncio.run(check_litellm(ll))
                        held = direct_image(path, body, {**ll.auth(), "Content-Type": "application/json"})
                        phase2["litellm"] = asyncio.run(
                            run_clients(
                                "litellm",
                                ll.port,
                                held,
                                args.clients,
                                warmup,
                                clients_duration,
                                ll,
                                fake,
                                args.latency,
                            )
                        )
                    finally:
                        ll.stop()
                    print(f"phase 2: litellm done ({time.perf_counter() - began:.0f} s)", flush=True)

                for mode_name in modes if "genplane" in paths else []:
                    gp = start_genplane(fresh(), fake.port, args.worker_concurrency, extra_env)
                    try:
                        asyncio.run(check_genplane(gp))
                        one = genplane_image(
                            gp.auth(), mode_name, args.poll_interval, args.wait_seconds, args.download
                        )
                        phase2[f"genplane-{mode_name}"] = asyncio.run(
                            run_clients(
                                f"genplane-{mode_name}",
                                gp.port,
                                one,
                                args.clients,
                                warmup,
                                clients_duration,
                                gp,
                                fake,
                                args.latency,
                            )
                        )
                    finally:
                        gp.stop()
                    print(
                        f"phase 2: genplane {mode_name} done ({time.perf_counter() - began:.0f} s)",
                        flush=True,
                    )
            finally:
                fake.stop()

    elapsed = time.perf_counter() - began
    return report(
        args,
        duration,
        clients_duration,
        warmup,
        phase1,
        phase2,
        ll_versions,
        gp_versions,
        notes,
        network_lines,
        elapsed,
    )


def report(
    args: argparse.Namespace,
    duration: float,
    clients_duration: float,
    warmup: float,
    phase1: dict[str, ThroughputResult],
    phase2: dict[str, ClientsResult],
    ll_versions: dict[str, str],
    gp_versions: dict[str, str],
    notes: list[str],
    network_lines: list[str],
    elapsed: float,
) -> int:
    checks: list[tuple[str, str, str, str, bool]] = []  # target, genplane, litellm, ratio, ok
    print()
    print(f"## genplane vs LiteLLM proxy ({'quick' if args.quick else 'full'} run, {elapsed:.0f} s)")
    print()
    print("- LiteLLM: " + ", ".join(f"{k} {v}" for k, v in ll_versions.items()))
    print("- genplane: " + ", ".join(f"{k} {v}" for k, v in gp_versions.items()))
    print(
        f"- Python {platform.python_version()}, {os.cpu_count()} cores; one server process each "
        f"(genplane serve: API + worker, GENPLANE_WORKER_CONCURRENCY={args.worker_concurrency}; "
        "litellm --num_workers 1)"
    )
    if args.genplane_env:
        print("- genplane settings changed for this run: " + ", ".join(f"`{e}`" for e in args.genplane_env))
    for note in notes:
        print(f"- install: {note}")
    if network_lines:
        print("- LiteLLM start-up log lines that look like network access:")
        for line in network_lines[:10]:
            print(f"  - `{line[:200]}`")
    else:
        print("- LiteLLM start-up log: no sign of network access (local cost map, no DB, no telemetry)")

    if phase1:
        print()
        print(
            f"### Phase 1: zero-latency upstream, {args.connections} keep-alive connections, {duration:.0f} s"
        )
        print()
        print("| gateway | requests/s | upstream calls/s | gateway CPU (cores) | responses |")
        print("|---|---:|---:|---:|---|")
        labels = {
            "litellm": "LiteLLM POST /v1/images/generations (held until the image)",
            "genplane": f"genplane POST /v1/generate/image/{GENPLANE_MODEL} (accepted)",
        }
        for key, result in phase1.items():
            codes = ", ".join(f"{c}: {n}" for c, n in sorted(result.load.statuses.items()))
            print(
                f"| {labels[key]} | {result.load.per_second:,.0f} | {result.upstream_per_second:,.0f} "
                f"| {result.cpu_cores:.2f} | {codes} |"
            )
        if "litellm" in phase1 and "genplane" in phase1:
            ratio = phase1["genplane"].load.per_second / max(phase1["litellm"].load.per_second, 1e-9)
            checks.append(
                (
                    f"requests/s, zero-latency upstream >= {TARGETS['rps_ratio']:.0f}x",
                    f"{phase1['genplane'].load.per_second:,.0f}/s",
                    f"{phase1['litellm'].load.per_second:,.0f}/s",
                    f"{ratio:.2f}x",
                    ratio >= TARGETS["rps_ratio"],
                )
            )

    if phase2:
        direct = phase2.get("direct")
        print()
        print(
            f"### Phase 2: {args.clients} clients, {args.latency:g} s upstream, {clients_duration:.0f} s "
            f"measured after {warmup:.0f} s"
        )
        print()
        labels = {
            "direct": "direct to the fake upstream",
            "litellm": "LiteLLM, POST held until the image",
            "genplane-poll": f"genplane, create + GET every {args.poll_interval:g} s",
            "genplane-wait": f"genplane, create + GET with `Prefer: wait={args.wait_seconds}`",
            "genplane-create-wait": f"genplane, create with `Prefer: wait={args.wait_seconds}` + GET",
        }
        print("| path | images/s | p50 | p99 | added p50 | added p99 | failed |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for key, r in phase2.items():
            added50 = ms(r.latency(0.5) - direct.latency(0.5)) if direct and key != "direct" else ""
            added99 = ms(r.latency(0.99) - direct.latency(0.99)) if direct and key != "direct" else ""
            print(
                f"| {labels[key]} | {r.per_second:,.1f} | {ms(r.latency(0.5))} | {ms(r.latency(0.99))} "
                f"| {added50} | {added99} | {r.failed} |"
            )
        print()
        print(
            "| path | gateway requests/s | GETs/image | gateway CPU (cores) | CPU s per 1,000 images "
            "| peak RSS | upstream calls/s (most at once) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for key, r in phase2.items():
            requests = sum(r.tally.sent.values()) / r.duration
            gets = f"{r.gets_per_image:.2f}" if key.startswith("genplane") else ""
            cores = f"{r.cpu_seconds / r.duration:.2f}" if r.cpu_seconds is not None else ""
            cpu = f"{r.cpu_per_1000:.1f}" if r.cpu_per_1000 is not None else ""
            print(
                f"| {labels[key]} | {requests:,.0f} | {gets} | {cores} | {cpu} | {mib(r.peak_rss)} "
                f"| {r.upstream_calls / r.duration:,.1f} ({r.upstream_peak}) |"
            )
        print()
        print(
            "Images/s: images finished inside the window. Latency: end to end, over every image started "
            "inside the window (awaited to its end); added = the path's percentile minus the direct "
            "call's. Gateway requests/s: requests the clients sent inside the window (for genplane "
            "creates and GETs). CPU and peak RSS: the gateway's process tree (user + system time inside "
            "the window; VmHWM since its start)."
        )
        for key, r in phase2.items():
            if r.errors:
                print(f"- {key} errors: " + "; ".join(f"{n}x {e}" for e, n in r.errors.most_common(5)))
            if r.unfinished:
                print(
                    f"- {key}: {r.unfinished} clients' images were still unfinished "
                    "when the drain after the window gave up"
                )
            print(
                f"- {key}: {len(r.completed())} images finished in the window, {len(r.sample())} "
                f"in the latency sample; the benchmark client used {r.client_cpu / r.duration:.2f} cores"
            )
        for key in ("genplane-wait", "genplane-create-wait"):
            wait = phase2.get(key)
            if wait is None:
                continue
            applied = ", ".join(f"{n:,}x {what}" for what, n in sorted(wait.tally.applied.items()))
            ignored = wait.tally.early > 0 or not any(
                what.startswith("GET wait=") for what in wait.tally.applied
            )
            verdict_text = (
                "**the server ignored the header: the clients degraded to tight polling**"
                if ignored
                else "honoured"
            )
            print(
                f"- {key}, `Prefer: wait={args.wait_seconds}`: {wait.gets_per_image:.2f} GETs per finished "
                f"image; in the window {wait.tally.sent['GET']:,} GETs sent, {wait.tally.early:,} answered "
                f"non-terminal in under a second; Preference-Applied: {applied or 'none'}: {verdict_text}"
            )
        ll = phase2.get("litellm")
        for key in ("genplane-poll", "genplane-wait"):
            gp = phase2.get(key)
            if ll is None or gp is None or direct is None:
                continue
            how = "poll" if key.endswith("poll") else "wait"
            checks.append(
                (
                    f"images/s >= LiteLLM's ({how})",
                    f"{gp.per_second:,.1f}",
                    f"{ll.per_second:,.1f}",
                    f"{gp.per_second / max(ll.per_second, 1e-9):.2f}x",
                    gp.per_second >= ll.per_second,
                )
            )
            gp99 = gp.latency(0.99) - direct.latency(0.99)
            ll99 = ll.latency(0.99) - direct.latency(0.99)
            checks.append((f"added p99 < LiteLLM's ({how})", ms(gp99), ms(ll99), "", bool(gp99 < ll99)))
            if gp.cpu_per_1000 is not None and ll.cpu_per_1000:
                ratio = gp.cpu_per_1000 / ll.cpu_per_1000
                checks.append(
                    (
                        f"CPU per 1,000 images <= 1/3 of LiteLLM's ({how})",
                        f"{gp.cpu_per_1000:.1f} s",
                        f"{ll.cpu_per_1000:.1f} s",
                        f"{ratio:.2f}",
                        ratio <= TARGETS["cpu_ratio"],
                    )
                )
            if gp.peak_rss is not None and ll.peak_rss is not None:
                checks.append(
                    (
                        f"peak RSS < LiteLLM's ({how})",
                        mib(gp.peak_rss),
                        mib(ll.peak_rss),
                        f"{gp.peak_rss / ll.peak_rss:.2f}",
                        gp.peak_rss < ll.peak_rss,
                    )
                )

    if checks:
        print()
        print("### Targets")
        print()
        print("| target | genplane | LiteLLM | ratio | |")
        print("|---|---:|---:|---:|---|")
        for target, gp_value, ll_value, shown, ok in checks:
            print(f"| {target} | {gp_value} | {ll_value} | {shown} | {verdict(ok)} |")
    failed = any(not ok for *_, ok in checks)
    failed |= any(r.failed for r in phase2.values())
    failed |= any(s >= 400 for r in phase1.values() for s in r.load.statuses)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
