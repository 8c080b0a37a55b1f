"""Slow and surplus clients cannot exhaust a real ``genplane serve`` (over real HTTP, on loopback).

An attacker once opened ~20,000 sockets that trickled header lines forever; none was
closed, the process ran out of file descriptors and a real generation failed with "Too
many open files". Here hundreds of raw sockets do the same, and the server must close
each once the request-head deadline passes, close connections beyond its cap at once,
and keep answering normal requests throughout.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import selectors
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from genplane.api.connections import connection_cap, raise_open_file_limit
from tests.serve_process import BIN, Server, stop_process, wait_ready

CROWD = 300
HEADER_TIMEOUT = 3.0
KEEPALIVE_TIMEOUT = 0.5
CAP = 100
CAPPED_HEADER_TIMEOUT = 8.0
PARTIAL_HEAD = b"GET /v1/user/account HTTP/1.1\r\nHost: 127.0.0.1\r\n"
TRICKLE = b"X-Slow: 1\r\n"
TRICKLE_EVERY = 0.25


# --------------------------------------------------------------------------- raw clients


def connect(port: int, count: int, head: bytes = PARTIAL_HEAD) -> list[socket.socket]:
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            opened.append(sock)
            try:
                sock.sendall(head)
            except OSError:
                pass  # already closed by the server: the crowd notices
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


class Crowd:
    """Client sockets watched for the server closing them, optionally trickling header lines."""

    def __init__(self, sockets: list[socket.socket], started: float | None = None) -> None:
        #: When the first of them connected (or later): no deadline of the server started before.
        self.started = time.monotonic() if started is None else started
        self.selector = selectors.DefaultSelector()  # epoll: no FD_SETSIZE ceiling
        self.open: set[socket.socket] = set()
        self.closed_after: list[float] = []  # seconds from ``started`` to each close
        self.answers: list[bytes] = []
        for sock in sockets:
            self.open.add(sock)
            self.selector.register(sock, selectors.EVENT_READ)

    def _closed(self, sock: socket.socket) -> None:
        self.closed_after.append(time.monotonic() - self.started)
        self.open.discard(sock)
        self.selector.unregister(sock)
        sock.close()

    def _receive(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except OSError:  # reset
            self._closed(sock)
            return
        if data:
            self.answers.append(data)
        else:
            self._closed(sock)

    def wait(self, until: Callable[[], bool], timeout: float, trickle: bool = True) -> bool:
        """Watch (and trickle) until ``until()`` holds; False if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        next_trickle = time.monotonic() + TRICKLE_EVERY
        while not until():
            now = time.monotonic()
            if now >= deadline:
                return False
            wake = min(deadline, next_trickle) if trickle else deadline
            for key, _ in self.selector.select(timeout=max(0.0, wake - now)):
                self._receive(key.fileobj)  # type: ignore[arg-type]
            if trickle and time.monotonic() >= next_trickle:
                for sock in list(self.open):
                    try:
                        sock.sendall(TRICKLE)
                    except OSError:
                        self._closed(sock)
                next_trickle = time.monotonic() + TRICKLE_EVERY
        return True

    def all_closed(self) -> bool:
        return not self.open

    def close(self) -> None:
        for sock in list(self.open):
            self.selector.unregister(sock)
            sock.close()
        self.open.clear()
        self.selector.close()


def account_status(server: Server, key: str) -> int:
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as client:
        return client.get("/v1/user/account", headers={"Authorization": f"Bearer {key}"}).status_code


def eventually_ok(server: Server, key: str, timeout: float) -> int:
    """The account's status once a request gets through (connections may still be refused)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return account_status(server, key)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling interval of a bounded wait


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors() -> Iterator[None]:
    """Room for a crowd of sockets in this process; the soft limit is raised if needed."""
    need = 2 * CROWD + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        yield
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target < need:
        pytest.skip(f"ulimit -n: the hard limit {hard} is below the {need} descriptors this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _serve(tmp: Path, **env: str) -> Iterator[tuple[Server, str]]:
    server = Server(tmp / "data")
    try:
        key = server.init()
        server.start(GENPLANE_RUN_WORKER="false", **env)
        yield server, key
    finally:
        server.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """Room for every client of the crowd: only the head deadline can close them."""
    yield from _serve(
        tmp_path_factory.mktemp("guarded"),
        GENPLANE_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        GENPLANE_KEEPALIVE_TIMEOUT_SECONDS=str(KEEPALIVE_TIMEOUT),
        GENPLANE_MAX_CONNECTIONS=str(4 * CROWD),
    )


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A cap far below the crowd, and a head deadline long enough not to be what closes them."""
    yield from _serve(
        tmp_path_factory.mktemp("capped"),
        GENPLANE_HEADER_TIMEOUT_SECONDS=str(CAPPED_HEADER_TIMEOUT),
        GENPLANE_MAX_CONNECTIONS=str(CAP),
    )


# --------------------------------------------------------------------------- tests


def test_trickling_clients_are_closed_and_the_server_keeps_serving(guarded: tuple[Server, str]) -> None:
    server, key = guarded
    before_connecting = time.monotonic()
    crowd = Crowd(connect(server.port, CROWD), started=before_connecting)
    try:
        assert account_status(server, key) == 200
        served_after = time.monotonic() - crowd.started

        assert crowd.wait(crowd.all_closed, timeout=HEADER_TIMEOUT + 20), (
            f"{len(crowd.open)} of {CROWD} trickling connections still open"
        )
        # The request above was answered while every one of them was still connected.
        assert served_after < min(crowd.closed_after)
        # The head deadline closed them: none went earlier, and trickling a line every
        # 0.25 s did not keep any beyond it (the wait above is bounded).
        assert min(crowd.closed_after) > HEADER_TIMEOUT - 0.2
        # An unfinished head is answered 408 before the close (or just closed).
        assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in crowd.answers), crowd.answers[:3]
        assert account_status(server, key) == 200
    finally:
        crowd.close()


def test_a_keep_alive_connection_must_send_its_next_head_in_time(guarded: tuple[Server, str]) -> None:
    """The deadline starts again after each response: trickling on a kept-alive connection is closed."""
    server, key = guarded
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    crowd: Crowd | None = None
    try:
        conn.request("GET", "/v1/user/account", headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close
        assert conn.sock is not None
        conn.sock.sendall(PARTIAL_HEAD)  # at once, so the idle keep-alive timer is not what closes it
        crowd = Crowd([conn.sock])
        assert crowd.wait(crowd.all_closed, timeout=HEADER_TIMEOUT + 20), "still open"
        assert crowd.closed_after[0] > HEADER_TIMEOUT - 1.0
    finally:
        if crowd is not None:
            crowd.close()
        conn.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    guarded: tuple[Server, str],
) -> None:
    server, key = guarded
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    crowd: Crowd | None = None
    try:
        conn.request("GET", "/v1/user/account", headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close
        assert conn.sock is not None
        crowd = Crowd([conn.sock])
        assert crowd.wait(crowd.all_closed, timeout=HEADER_TIMEOUT + 20, trickle=False), "still open"
        # Closed by the keep-alive timeout (0.5 s), well before the head deadline (3 s).
        assert KEEPALIVE_TIMEOUT - 0.2 < crowd.closed_after[0] < HEADER_TIMEOUT
        assert crowd.answers == []
    finally:
        if crowd is not None:
            crowd.close()
        conn.close()


def test_connections_beyond_the_cap_are_closed_at_once(capped: tuple[Server, str]) -> None:
    server, key = capped
    crowd = Crowd(connect(server.port, CROWD))
    try:
        # Those beyond the cap are closed long before the head deadline could close any.
        beyond = CROWD - CAP
        assert crowd.wait(lambda: len(crowd.closed_after) >= beyond, timeout=CAPPED_HEADER_TIMEOUT / 2), (
            f"only {len(crowd.closed_after)} of the {beyond} connections beyond the cap were closed"
        )
        # ...and only those: the cap is a count, not a blanket refusal.
        held = len(crowd.open)
        assert CAP - 5 <= held <= CAP, held

        # A new connection finds no room and is closed at once, rather than held waiting.
        started = time.monotonic()
        with pytest.raises(httpx.TransportError):
            account_status(server, key)
        assert time.monotonic() - started < CAPPED_HEADER_TIMEOUT / 2

        # Once the crowd leaves, the server answers again.
        crowd.close()
        assert eventually_ok(server, key, timeout=10) == 200
    finally:
        crowd.close()


def test_serve_on_port_0_logs_the_port_it_bound(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENPLANE_")}
    env.update(
        GENPLANE_DATA_DIR=str(tmp_path / "data"),
        GENPLANE_RUN_WORKER="false",
        GENPLANE_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [str(BIN / "genplane"), "serve", "--host", "127.0.0.1", "--port", "0"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        events: dict[str, dict[str, object]] = {}
        buffered = b""
        deadline = time.monotonic() + 30
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while "listening" not in events:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no 'listening' line within 30 s; saw {list(events)}"
                if not selector.select(timeout=remaining):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"genplane serve exited (status {proc.wait(timeout=10)})"
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.startswith(b"{"):
                        record = json.loads(line)
                        events.setdefault(str(record.get("event")), record)
        listening = events["listening"]
        assert listening["host"] == "127.0.0.1"
        port = listening["port"]
        assert isinstance(port, int) and port > 0
        limits = events["connection limits"]
        assert limits["max_connections"] == min(2048, int(str(limits["open_file_limit"])) - 256)
        wait_ready(f"http://127.0.0.1:{port}", proc)
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- the cap, computed


def test_the_cap_leaves_the_reserve_free() -> None:
    assert connection_cap(2048, 1024, 256) == 768
    assert connection_cap(100, 20_000, 256) == 100
    assert connection_cap(2048, 2304, 256) == 2048
    assert connection_cap(50, resource.RLIM_INFINITY, 256) == 50
    with pytest.raises(ValueError, match="GENPLANE_FD_RESERVE"):
        connection_cap(2048, 256, 256)


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"soft": 1024, "hard": 4096}
    set_to: list[tuple[int, int]] = []

    def getrlimit(which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return limits["soft"], limits["hard"]

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        set_to.append(value)

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert raise_open_file_limit() == 4096
    assert set_to == [(4096, 4096)]

    def refuse(which: int, value: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert raise_open_file_limit() == 1024  # the limit that is actually in force

    limits["hard"] = resource.RLIM_INFINITY
    assert raise_open_file_limit() == 1024
