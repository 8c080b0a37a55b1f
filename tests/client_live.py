"""What the SDK and user-CLI tests share: a live server, fresh accounts, a connection dropper."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from genplane.accounts import service as accounts
from genplane.accounts.scopes import parse_scopes
from genplane.credits.money import to_millis
from genplane.db.engine import Database
from genplane.settings import Settings
from tests.serve_process import BIN, Server

#: The local provider takes this long per job, so a generation is still running when a test
#: cancels it and a waiting client has something to wait for.
PROVIDER_DELAY = "1.5"
WEBHOOK_HOSTS = '["127.0.0.1"]'


def start_live(data_dir: Path, provider_delay: str = PROVIDER_DELAY) -> tuple[Server, str]:
    """A ``genplane serve`` that lets webhooks reach loopback; returns it and a full-access key."""
    server = Server(data_dir)
    key = server.init()
    server.start(
        GENPLANE_LOCAL_PROVIDER_DELAY_SECONDS=provider_delay, GENPLANE_WEBHOOK_ALLOW_HOSTS=WEBHOOK_HOSTS
    )
    return server, key


def operator(server: Server, *args: str) -> str:
    """Run an operator command (``genplane accounts …``) on the server's data directory."""
    done = subprocess.run(
        [str(BIN / "genplane"), *args],
        env=server.env(GENPLANE_WEBHOOK_ALLOW_HOSTS=WEBHOOK_HOSTS, COLUMNS="300"),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass(frozen=True)
class Account:
    account_id: str
    key: str


def fresh_account(server: Server, credits: str = "10") -> Account:
    """An account of the test's own, so what it lists and counts is only its own.

    Made in this process on the server's database (what ``genplane accounts create`` and
    ``keys create`` do, without starting two CLI processes per test)."""

    async def work() -> Account:
        settings = Settings(data_dir=server.data_dir)
        db = Database(settings.resolved_database_url)
        try:
            account = await accounts.create_account(db, "sdk", credits_millis=to_millis(credits))
            issued = await accounts.create_key(
                db, settings, account.id, "sdk", parse_scopes("full_access", None)
            )
        finally:
            await db.dispose()
        return Account(account.id, issued.key)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callable from async tests too
        return pool.submit(asyncio.run, work()).result()


@dataclass
class DroppingProxy:
    """A TCP proxy on loopback that loses the answer to the first ``drop`` requests.

    For those it reads the whole request, forwards it to the server, waits for the start
    of the server's answer (so the server has acted on it) and then closes the client's
    connection without a byte: the client sees a dropped connection after its request
    took effect. Later connections are piped both ways untouched."""

    upstream_port: int
    drop: int = 1
    dropped: list[bytes] = field(default_factory=list)  # the answers the client never saw

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        if len(self.dropped) < self.drop:
            upstream.sendall(self._read_request(conn))
            self.dropped.append(upstream.recv(65536))  # blocks until the server answers
            conn.close()
            upstream.close()
            return
        threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True).start()
        self._pipe(conn, upstream)

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length and len(body) < int(length[1]):
            body += conn.recv(65536)
        return head + b"\r\n\r\n" + body

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
