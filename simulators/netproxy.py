"""Loopback networking for the simulators and tests: a free port, and a TCP proxy between devices
and the broker that can cut, delay and reset the network.

    async with NetProxy(upstream=("127.0.0.1", 1883)) as proxy:   # listens on proxy.port
        proxy.cut()       # the 4G link goes silent: bytes are dropped, new connections refused
        proxy.restore()   # back: connections that were cut are closed, new ones go through
        proxy.delay_s = 0.3
        proxy.reset()     # every connection closed at once (a NAT timeout, a cell handover)

A cut is a black hole, not a polite close: the device and the broker each find out only through
their keepalive, exactly as over a dead mobile link.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Self

import structlog

log = structlog.get_logger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick), for a server started next."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class NetProxy:
    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self._host = host
        self._port = port
        self.port = 0
        self.delay_s = 0.0
        self._cut = False
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        for task in list(self._pumps):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        log.info("network cut", port=self.port)
        self._cut = True

    def restore(self) -> None:
        log.info("network restored", port=self.port)
        # What was open during the cut is dead on both ends by now; close it so neither side
        # gets bytes that were "in the air" for a minute.
        self.reset()
        self._cut = False

    def reset(self) -> None:
        for client, server in list(self._conns):
            for writer in (client, server):
                writer.close()
        self._conns.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._cut:
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("proxy cannot reach upstream", upstream=self.upstream, error=str(exc))
            client_writer.close()
            return
        self.connections += 1
        pair = (client_writer, server_writer)
        self._conns.add(pair)
        for reader, writer in ((client_reader, server_writer), (server_reader, client_writer)):
            task = asyncio.create_task(self._pump(reader, writer, pair))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self._cut:
                    continue  # the black hole
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pair:
                w.close()
            self._conns.discard(pair)
