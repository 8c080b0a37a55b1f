"""A real webhook receiver: an HTTP server on 127.0.0.1 that records what it is sent.

It runs uvicorn on its own thread and event loop, so the product's dispatcher reaches
it over a real TCP socket (connection refused while it is stopped, real status codes,
real headers) exactly as it would reach a customer's server. ``respond`` decides each
answer, so a test can make it fail, ask for a delay or redirect.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn

from genplane.webhooks.signing import verify


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() when it arrived
    status: int  # what the receiver answered; DISCONNECTED when the sender left before the answer

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.body)
        return data

    @property
    def event(self) -> str:
        return self.headers.get("x-babysea-event", "")

    @property
    def delivery_id(self) -> str:
        return self.headers.get("x-babysea-delivery-id", "")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


Answer = tuple[int, dict[str, str]]

#: The status of a request whose sender went away before the answer (mid-body, say): nothing
#: was answered, so it never counts as delivered however much of the body arrived.
DISCONNECTED = 0


def always_ok(_: Received) -> Answer:
    return 200, {}


class Receiver:
    """``url`` is where the hooks go; ``received`` lists every request, failed ones too."""

    def __init__(self) -> None:
        # The port is held from the start, bound but not listening: connections to it are
        # refused until start(), and no other process can take it in the meantime.
        self._socket: socket.socket | None = self._bind(0)
        self.port: int = self._socket.getsockname()[1]
        self.received: list[Received] = []
        self.respond: Callable[[Received], Answer] = always_ok
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    # -- lifecycle ---------------------------------------------------------------------

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def start(self) -> None:
        assert self._server is None, "already running"
        sock = self._socket if self._socket is not None else self._bind(self.port)
        self._socket = None  # uvicorn closes it when it stops
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            interface="asgi3",
            proxy_headers=False,
            backlog=2048,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"receiver:{self.port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive():
                raise AssertionError("the receiver could not start")
            if time.monotonic() > deadline:
                raise AssertionError("the receiver did not start listening")
            time.sleep(0.005)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        if self._server is None:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            return
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the receiver did not stop"
        self._server = self._thread = None

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    # -- what arrived ------------------------------------------------------------------

    def hooks(self, *, ok_only: bool = False, path: str = "/hook") -> list[Received]:
        with self._lock:
            items = list(self.received)
        return [r for r in items if r.path == path and (r.ok or not ok_only)]

    def delivered(self) -> list[Received]:
        """The requests answered 2xx: the deliveries that count."""
        return self.hooks(ok_only=True)

    # -- the ASGI app ------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = Received(scope["path"], headers, b"".join(chunks), time.monotonic(), DISCONNECTED)
                with self._lock:
                    self.received.append(gone)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        pending = Received(scope["path"], headers, b"".join(chunks), time.monotonic(), DISCONNECTED)
        status, extra = self.respond(pending)
        with self._lock:
            self.received.append(Received(pending.path, pending.headers, pending.body, pending.at, status))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in extra.items()],
            }
        )
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"no"})


async def until(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 15.0,
    what: str = "the condition",
    interval: float = 0.02,
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def verified_payload(received: Received, secret: str) -> dict[str, Any]:
    """The payload, after checking the X-BabySea-Signature with ``verify``."""
    return verify(received.body, received.headers.get("x-babysea-signature", ""), secret)
