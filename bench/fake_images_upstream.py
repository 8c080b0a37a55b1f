"""A fake OpenAI-compatible images server for the gateway benchmarks (bench/peer_litellm.py).

Run: ``python bench/fake_images_upstream.py --latency SECONDS``; it binds 127.0.0.1 on a
free port and prints ``port N`` on its first line of stdout.

``POST /v1/images/generations`` (any body) answers after ``--latency`` seconds with
``{"created": ..., "data": [{"b64_json": <PNG>}]}``, always the same PNG (made once from
seeded noise, so it does not compress: about 20 KB). ``GET /stats`` answers
``{"requests": N, "in_flight": N, "peak_in_flight": N, "png_bytes": N}``: generations
served, being served, and the most served at once since the previous ``GET /stats``.
It is a bare ASGI callable under uvicorn (httptools, uvloop) in its own process, so
that its CPU is counted against neither gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import socket
import sys
import time
from typing import Any

import uvicorn

PNG_SIDE = 82  # 82 x 82 x 3 bytes of noise: a PNG of about 20 KB


def fixed_png(side: int = PNG_SIDE, seed: int = 20261203) -> bytes:
    from PIL import Image

    noise = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), noise).save(out, "PNG")
    return out.getvalue()


class FakeImages:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0  # since the last GET /stats
        self.png = fixed_png()
        self.b64 = base64.b64encode(self.png).decode()

    def answer(self) -> bytes:
        return json.dumps({"created": int(time.time()), "data": [{"b64_json": self.b64}]}).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:  # drain the body
            message = await receive()
            more = message.get("more_body", False)
        path, method = scope["path"], scope["method"]
        if method == "POST" and path.rstrip("/").endswith("/images/generations"):
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                if self.latency > 0:
                    await asyncio.sleep(self.latency)
            finally:
                self.in_flight -= 1
            self.requests += 1
            status, body = 200, self.answer()
        elif method == "GET" and path == "/stats":
            stats = {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "png_bytes": len(self.png),
            }
            self.peak_in_flight = self.in_flight
            status, body = 200, json.dumps(stats).encode()
        else:
            status, body = 404, b'{"error": {"message": "not found", "type": "invalid_request_error"}}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="Seconds before each answer.")
    args = parser.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        FakeImages(args.latency),
        log_level="warning",
        access_log=False,
        backlog=2048,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=60,
        limit_concurrency=None,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
