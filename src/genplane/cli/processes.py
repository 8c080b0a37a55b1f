"""The long-running process roles: a worker without the API, and N API processes on one port.

``genplane worker`` runs jobs, webhook deliveries and sweeps, sharing the database (and
Redis, storage) with the API processes; it needs no port. ``genplane serve --workers N``
binds the listening socket once and starts N ``genplane serve --fd`` children on it, so the
kernel spreads connections over them; the parent only supervises: a child that dies is
started again, and SIGTERM or SIGINT is passed on to every child, which drains and exits.
The children share a metrics directory (:mod:`genplane.metrics.multiprocess_dir`), so the
``/metrics`` of whichever child answers a scrape counts the requests of all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from genplane.collector import tune_after_startup
from genplane.db.migrate import upgrade
from genplane.metrics.exposition import multiprocess_directory
from genplane.metrics.multiprocess_dir import ChildMetricsDirectory
from genplane.settings import Settings

log = structlog.get_logger("genplane.processes")

T = TypeVar("T")

#: How long a stopping child may take before it is killed: its drain, plus shutdown.
CHILD_STOP_MARGIN_SECONDS = 15.0
#: A child that dies sooner than this after its start is restarted only after a pause.
RESTART_PAUSE_SECONDS = 1.0


def run_on_fast_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed, the loop uvicorn's ``auto`` picks for
    the API, so both roles run on one loop implementation (on the standard loop, the selector
    and socket transports were about a fifth of a worker's samples under bench/scale.py)."""
    try:
        import uvloop
    except ImportError:  # a platform uvloop does not build on
        return asyncio.run(main)
    return uvloop.run(main)


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT, on the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def run_worker(settings: Settings) -> None:
    """Be a worker until SIGTERM/SIGINT; then drain for ``worker_drain_seconds`` and hand back."""
    from genplane.api.app import build_services  # the one place services are assembled

    upgrade(settings.resolved_database_url)
    multiprocess_directory()  # a PROMETHEUS_MULTIPROC_DIR that is no directory fails now
    services = build_services(settings)
    stop = _stop_event()
    await services.start(api=False, worker=True)
    tune_after_startup(settings)  # thousands of jobs in flight: as `serve` does
    log.info("genplane_worker_started", owner=services.worker.owner, region=settings.region)
    try:
        await stop.wait()
        log.info("genplane_worker_stopping", running=services.worker.in_flight)
    finally:
        await services.stop(settings.worker_drain_seconds)
    log.info("genplane_worker_stopped")


def listening_socket(host: str, port: int) -> socket.socket:
    """The socket the children share; bound by the parent, so ``--port 0`` gives one port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _spawn(fd: int, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "genplane", "serve", "--fd", str(fd), pass_fds=(fd,), env=env
    )


async def supervise(processes: int, sock: socket.socket, settings: Settings) -> int:
    """Run ``processes`` API children on ``sock`` until SIGTERM/SIGINT; the exit status."""
    # Migrate once here: the children would otherwise all try at once at start-up.
    upgrade(settings.resolved_database_url)
    fd = sock.fileno()
    stop = _stop_event()
    loop = asyncio.get_running_loop()
    children: dict[asyncio.Task[int], tuple[asyncio.subprocess.Process, float]] = {}
    metrics_dir = ChildMetricsDirectory()
    env = metrics_dir.child_env()

    async def start_one() -> None:
        child = await _spawn(fd, env)
        children[asyncio.create_task(child.wait())] = (child, loop.time())
        log.info("api_process_started", pid=child.pid)

    name = sock.getsockname()
    log.info("listening", host=name[0], port=name[1], processes=processes)
    stopping = asyncio.create_task(stop.wait())
    try:
        for _ in range(processes):
            await start_one()
        while not stop.is_set():
            done, _ = await asyncio.wait({*children, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopping}:
                child, started = children.pop(task)
                log.error("api_process_exited", pid=child.pid, status=task.result())
                metrics_dir.process_exited(child.pid)
                if loop.time() - started < RESTART_PAUSE_SECONDS:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stopping), RESTART_PAUSE_SECONDS)
                if not stop.is_set():
                    await start_one()
    finally:
        stopping.cancel()
        # No child is started again: the parent's copy of the port goes, so that once the
        # children stop accepting, new connections are refused instead of queueing unanswered.
        sock.close()
        for child, _ in children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        grace = settings.worker_drain_seconds + CHILD_STOP_MARGIN_SECONDS
        if children:
            _, late = await asyncio.wait(children, timeout=grace)
            for task in late:
                child, _ = children[task]
                log.error("api_process_killed", pid=child.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            await asyncio.gather(*children, return_exceptions=True)
        for child, _ in children.values():
            metrics_dir.process_exited(child.pid)
        metrics_dir.close()
    log.info("api_processes_stopped")
    return 0

