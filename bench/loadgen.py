"""A small keep-alive HTTP/1.1 load generator on raw asyncio streams.

A general-purpose client (httpx) spends more CPU per request than a bare Starlette
endpoint does, so it would measure itself rather than the server. This one only writes
prepared bytes and reads one response by Content-Length, which keeps the client well
ahead of the server on one core.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def build_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    port: int, requests: Iterator[bytes], connections: int, duration: float, warmup: float = 0.5
) -> LoadResult:
    """Drive the server for ``warmup + duration`` seconds; count only the measured window."""
    statuses: Counter[int] = Counter()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    counted = 0

    async def one_connection() -> None:
        nonlocal counted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                writer.write(next(requests))
                status = await _read_response(reader)
                if time.perf_counter() >= measure_from:
                    counted += 1
                    statuses[status] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return LoadResult(counted, duration, statuses)


def cycle(items: list[bytes]) -> Iterator[bytes]:
    return itertools.cycle(items)
