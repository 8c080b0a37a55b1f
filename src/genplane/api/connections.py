"""Client connections: each must earn its file descriptor quickly, and there are only so many.

Uvicorn closes an idle keep-alive connection, but never one that trickles a request head
a line at a time, and its ``limit_concurrency`` answers 503 only once a head is
complete. A few thousand such sockets held every file descriptor of the process, and a
generation then failed to open its database connection or output file ("Too many open
files"). So the HTTP protocol here closes a connection that has not delivered a complete
request head in time, and one beyond the connection cap as soon as it is accepted; the
cap leaves descriptors free for the database, storage and provider calls.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import structlog
import uvicorn
from starlette.types import ASGIApp

from genplane.settings import Settings

if TYPE_CHECKING:
    # Both of uvicorn's HTTP/1.1 protocols have every hook used below.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornHttpProtocol
else:
    # The class uvicorn's http="auto" picks: httptools when it imports, h11 otherwise.
    from uvicorn.protocols.http.auto import AutoHTTPProtocol as _UvicornHttpProtocol

log = structlog.get_logger("genplane")

#: Sent before closing a connection that began a request head but did not finish it in time.
REQUEST_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    max_connections: int


class GuardedHttpProtocol(_UvicornHttpProtocol):
    """Uvicorn's HTTP protocol with a request-head deadline and a connection cap.

    The deadline runs from the connection's start and again from the end of each
    response; while a request is being handled (its head is complete) it does not apply,
    since the request timeout of the app covers the body and the handling.
    """

    limits: ClassVar[ConnectionLimits]

    _head_deadline: asyncio.TimerHandle | None = None
    _head_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            # Out of the count now, so the connections still closing do not refuse the next one.
            self.connections.discard(self)
            transport.close()
            return
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        self._head_begun = True
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._head_begun = False
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.limits.header_timeout, self._head_deadline_passed)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self not in self.connections:
            return  # closing already, or handed over to a WebSocket protocol
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a head arrived in time: its request is being handled (or queued behind one)
        if self._head_begun:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """A protocol class bound to ``limits``: uvicorn builds each connection's protocol from the class."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return the soft limit in force.

    The soft limit is often far below the hard one (1024 against 500k), and an
    unprivileged process may raise it, so the connection cap need not be that small.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def connection_cap(max_connections: int, open_file_limit: int, fd_reserve: int) -> int:
    """The connections a process may hold and still have ``fd_reserve`` descriptors for its own work."""
    if open_file_limit == resource.RLIM_INFINITY:
        return max_connections
    cap = min(max_connections, open_file_limit - fd_reserve)
    if cap < 1:
        raise ValueError(
            f"the open-file limit ({open_file_limit}) leaves no connection once GENPLANE_FD_RESERVE "
            f"({fd_reserve}) descriptors are kept free: raise `ulimit -n` or lower the reserve"
        )
    return cap


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.config.fd is not None and self.servers:
            # uvicorn listens on a duplicate of the inherited descriptor and closes that one when
            # it stops accepting; closing the original now means a draining process no longer
            # holds the port open, so once every holder stops, new connections are refused
            # (another instance takes them) instead of waiting in a backlog nobody accepts.
            os.close(self.config.fd)
        # The actual address, so that `--port 0` (any free port) is usable.
        name = self.servers[0].sockets[0].getsockname() if self.servers else None
        if isinstance(name, tuple):
            log.info("listening", host=name[0], port=name[1])
        else:
            log.info("listening", address=name)


def build_server(
    app: ASGIApp, settings: Settings, *, host: str, port: int, fd: int | None = None
) -> uvicorn.Server:
    """The uvicorn server `genplane serve` runs; on ``fd`` (an inherited listening socket) if given."""
    open_files = raise_open_file_limit()
    cap = connection_cap(settings.max_connections, open_files, settings.fd_reserve)
    log.info(
        "connection limits",
        max_connections=cap,
        open_file_limit=open_files,
        fd_reserve=settings.fd_reserve,
        header_timeout_seconds=settings.header_timeout_seconds,
        keepalive_timeout_seconds=settings.keepalive_timeout_seconds,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        fd=fd,
        http=protocol_class(ConnectionLimits(settings.header_timeout_seconds, cap)),
        # Annotated int by uvicorn, but only ever handed to loop.call_later, which takes a float.
        timeout_keep_alive=settings.keepalive_timeout_seconds,  # type: ignore[arg-type]
        # The app resolves client addresses itself, from GENPLANE_TRUSTED_PROXIES only.
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_level=settings.log_level.lower(),
    )
    return _Server(config)
