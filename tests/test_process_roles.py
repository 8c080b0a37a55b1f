"""The process roles as an operator runs them: ``serve --workers N`` and ``genplane worker``."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.serve_process import BIN, Server, stop_process


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def generate(client: httpx.Client, key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    created = client.post(
        "/v1/generate/image/local/preview-image", json={"generation_prompt": "a fox"}, headers=headers
    )
    assert created.status_code == 200, created.text
    gid = created.json()["data"]["generation_id"]
    record: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal record
        record = client.get(f"/v1/content/{gid}", headers=headers).json()["data"]
        return record["generation_status"] in ("succeeded", "failed", "canceled")

    until(ended)
    return record


def test_serve_workers_runs_n_processes_on_one_port_and_replaces_one_that_dies(server: Server) -> None:
    key = server.init()
    server.start("--workers", "2")
    assert server.proc is not None
    parent = server.proc.pid
    until(lambda: len(children(parent)) == 2)
    first = children(parent)
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as client:
        assert generate(client, key)["generation_status"] == "succeeded"
        victim = min(first)
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        until(lambda: len(children(parent)) == 2 and victim not in children(parent))
        for _ in range(10):  # whichever process takes the connection answers
            assert client.get("/v1/status", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    server.proc = None


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_stopping_serve_workers_refuses_new_connections_while_its_children_drain(
    server: Server,
) -> None:
    """SIGTERM: the parent and every draining child let go of the port, so a new connection is
    refused at once (a load balancer moves on) rather than queued where nobody accepts it."""
    key = server.init()
    server.start(
        "--workers", "2", GENPLANE_WORKER_DRAIN_SECONDS="60", GENPLANE_LOCAL_PROVIDER_DELAY_SECONDS="30"
    )
    assert server.proc is not None
    parent = server.proc.pid
    until(lambda: len(children(parent)) == 2)
    server.socket.close()  # the test's own copy, kept for restarts, would hold the port open
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as client:
        created = client.post(
            "/v1/generate/image/local/preview-image", json={"generation_prompt": "a fox"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert created.status_code == 200, created.text
    server.proc.send_signal(signal.SIGTERM)
    until(lambda: refused(server.port))
    draining = children(parent)
    assert draining, "the children had already exited: nothing was draining"
    for pid in draining:
        subprocess.run(["kill", "-KILL", str(pid)], check=False)
    assert server.proc.wait(timeout=30) is not None
    server.proc = None


@pytest.mark.parametrize("backend", ["sqlite", "pg"])
def test_an_api_only_process_and_a_worker_process_share_the_work(
    server: Server, backend: str, request: pytest.FixtureRequest
) -> None:
    extra: dict[str, str] = {}
    if backend == "pg":
        database = request.getfixturevalue("database_url")
        extra["GENPLANE_DATABASE_URL"] = database
    key = server.init(**extra)
    server.start(GENPLANE_RUN_WORKER="false", **extra)
    worker = subprocess.Popen(
        [str(BIN / "genplane"), "worker", "--concurrency", "4"],
        env=server.env(**extra), stdin=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as client:
            assert generate(client, key)["generation_status"] == "succeeded"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        stop_process(worker)
