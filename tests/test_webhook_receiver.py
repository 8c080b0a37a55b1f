"""The fake receiver counts a delivery only when it answered: a sender that left is no 2xx."""

from __future__ import annotations

import socket

from tests.webhook_receiver import DISCONNECTED, Receiver, until


async def test_a_sender_that_leaves_mid_body_is_not_delivered() -> None:
    receiver = Receiver()
    await receiver.astart()
    try:
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
            sock.sendall(
                b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{\"type\": \"generation.comp"
            )
        hooks = await until(receiver.hooks, what="the receiver to see the cut-off request")
        assert [h.status for h in hooks] == [DISCONNECTED]
        assert receiver.delivered() == []
    finally:
        await receiver.astop()


async def test_a_whole_request_is_answered_and_delivered() -> None:
    receiver = Receiver()
    await receiver.astart()
    try:
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
            sock.sendall(b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
        assert [h.status for h in receiver.delivered()] == [200]
    finally:
        await receiver.astop()
