"""A real ``genplane serve`` in a subprocess, on a port nobody else can take.

The test process binds the listening socket itself (127.0.0.1, port 0) and keeps it open
for the whole life of a :class:`Server`; every ``genplane serve`` it starts inherits the
socket (``--fd``). Picking a free port and handing its number to the child left a
window in which another process could bind it first, and a restart after ``kill()``
could find it taken. While no server runs, connections wait in the socket's backlog
rather than being refused.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def wait_ready(base_url: str, proc: subprocess.Popen[Any], timeout: float = START_TIMEOUT) -> None:
    """Until ``GET /openapi.json`` answers 200; fails at once if the server process exits.

    The socket listens before the server runs, so a request simply waits in the backlog
    until the server accepts it: no pause between attempts is needed, and each attempt
    is short only so that a server that died is noticed.
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, trust_env=False) as client:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{base_url} did not answer within {timeout} s")
            code = proc.poll()
            assert code is None, f"the server exited during start-up (status {code})"
            try:
                if client.get("/openapi.json", timeout=min(1.0, remaining)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            try:  # a refused or reset attempt returns at once: wait on the process instead
                proc.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Server:
    """``genplane serve`` on one data directory, started, killed and restarted on one socket."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.socket = listening_socket()
        self.port: int = self.socket.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENPLANE_")}
        env.update(
            GENPLANE_DATA_DIR=str(self.data_dir),
            GENPLANE_PORT=str(self.port),
            GENPLANE_PUBLIC_BASE_URL=self.base_url,
            GENPLANE_LEASE_SECONDS="2",
            GENPLANE_WORKER_DRAIN_SECONDS="0",
            GENPLANE_SWEEP_INTERVAL_SECONDS="0.5",
            GENPLANE_LOG_LEVEL="WARNING",
        )
        env.update(overrides)
        return env

    def init(self, **overrides: str) -> str:
        out = subprocess.run(
            [str(BIN / "genplane"), "init", "--quickstart"],
            env=self.env(**overrides), check=True, capture_output=True, text=True, timeout=60,
        ).stdout
        match = re.search(r"^(bye_\S+)$", out, re.M)
        assert match, out
        return match.group(1)

    def start(self, *args: str, **overrides: str) -> None:
        """``genplane serve`` with ``args`` added (``--workers 2``) and settings ``overrides``."""
        assert self.proc is None, "already running"
        fd = self.socket.fileno()
        self.proc = subprocess.Popen(
            [str(BIN / "genplane"), "serve", "--fd", str(fd), *args],
            env=self.env(**overrides), stdin=subprocess.DEVNULL, pass_fds=(fd,),
        )
        try:
            wait_ready(self.base_url, self.proc)
        except BaseException:
            self.stop_process()
            raise

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop_process(self) -> None:
        """Terminate the server but keep the socket, for a later ``start()``."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def stop(self) -> None:
        """The end of this server's life: the process and the socket."""
        self.stop_process()
        self.socket.close()
