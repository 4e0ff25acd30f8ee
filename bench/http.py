"""The load generator's HTTP side: lean keep-alive connections and a paced offer of requests."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from bench.env import BenchError

Request = tuple[str, str, bytes, dict[str, str]]  # method, path, body, headers


async def wait_http(port: int, *, instances: int = 1, timeout_s: float = 90.0) -> None:
    """Until `instances` server processes answer `/healthz` on `port` (each new connection may
    land on another worker); `BenchError` if they do not in time."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while len(seen) < instances:
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                answer = await client.get("/healthz")
                if answer.status_code == 200:
                    seen.add(str(answer.json().get("instance")))
                    continue
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(
                f"{instances - len(seen)} server process(es) did not start; see the log in the data folder"
            )
        await asyncio.sleep(0.2)


class Connection:
    """One keep-alive HTTP/1.1 connection, the leanest client there is: the load generator must
    not be what limits the rate (httpx cost ~10x more CPU per request here)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body
        )
        await self._writer.drain()
        status_line = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self._reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclass(slots=True)
class Offered:
    """What a paced offer got back: answer times (ms from when each request was due, so queueing
    in the sender counts) by request kind, statuses, failed connections, seconds taken."""

    answers_ms: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    seconds: float = 0.0


async def offer(port: int, connections: int, requests: Sequence[tuple[str, Request]], rate: float) -> Offered:
    """Offer `requests` (kind, request) at `rate`, each queued at its due time, to `connections`
    keep-alive connections."""
    result = Offered()
    queue: asyncio.Queue[tuple[float, str, Request] | None] = asyncio.Queue()

    async def worker() -> None:
        connection = Connection(port)
        try:
            while (item := await queue.get()) is not None:
                due, kind, (method, path, body, headers) = item
                try:
                    status = await connection.request(method, path, body, headers)
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    result.errors += 1
                    connection.close()
                    connection = Connection(port)
                    continue
                result.statuses[status] += 1
                if status < 300:
                    result.answers_ms.setdefault(kind, []).append((time.perf_counter() - due) * 1000)
        finally:
            connection.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    started = time.perf_counter()
    for i, (kind, request) in enumerate(requests):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, kind, request))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.seconds = time.perf_counter() - started
    return result
