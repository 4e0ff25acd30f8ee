"""One UART, opened with pyserial, used from asyncio without blocking the loop.

    async with SerialLine("/dev/ttyS1", baudrate=9600, name="tts") as line:
        async with line.session():          # one exchange at a time on a half-duplex device
            await line.write(frame)
            data = await line.read(0.2)

Every blocking pyserial call runs on this line's own thread, so a slow or hung port never
stalls the event loop nor starves other lines. When the port fails (cable pulled, USB device
gone, the peer of a pseudo-terminal closed) the line closes it and raises `Unreachable`; the next
call reopens it, no more often than the backoff allows, so a part that comes back is used again
without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import termios
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, cast

import serial
import structlog

from edge_agent.hardware.errors import Unreachable

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# What a port that went away raises: pyserial's own error, the OS error under it, and (from
# tcflush/tcsetattr on a tty whose other side is gone) termios.error, which is not an OSError.
PORT_ERRORS = (serial.SerialException, OSError, termios.error)


class Port(Protocol):
    """The part of a pyserial port this module uses."""

    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def flush(self) -> None: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


def open_url(url: str, **options: Any) -> Port:
    """pyserial's opener: device paths and URLs such as loop:// or rfc2217://host:port."""
    return cast("Port", serial.serial_for_url(url, **options))


# How long one blocking read may hold the line's thread; short, so a cancelled caller is
# released quickly and a closed line stops promptly.
READ_SLICE_S = 0.02
# A port that failed is retried after 0.5 s, then backing off to 10 s: quick to notice a part
# that was only reset, without hammering the kernel with open() calls for one that is gone.
REOPEN_INITIAL_S = 0.5
REOPEN_MAX_S = 10.0


class SerialLine:
    def __init__(
        self,
        url: str,
        *,
        baudrate: int,
        name: str,
        opener: Callable[..., Port] = open_url,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.name = name
        self._opener = opener
        self._port: Port | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"serial-{name}")
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._retry_delay = REOPEN_INITIAL_S
        self._down_reason: str | None = None
        self._log = log.bind(part=name, port=url)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # executor already shut down
            await self._call(self._close_port)
        self._executor.shutdown(wait=True)

    @property
    def is_open(self) -> bool:
        return self._port is not None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Hold the line for one request and its answer."""
        async with self._lock:
            yield

    async def write(self, data: bytes) -> None:
        port = await self._ensure_open()
        await self._guarded(port.write, data)
        await self._guarded(port.flush)

    async def read(self, wait_s: float) -> bytes:
        """Bytes that arrive within `wait_s` (returns as soon as some came and the line went quiet)."""
        port = await self._ensure_open()
        deadline = time.monotonic() + wait_s
        out = bytearray()
        while True:
            chunk = await self._guarded(self._read_slice, port)
            out += chunk
            if (out and not chunk) or time.monotonic() >= deadline:
                return bytes(out)

    async def discard_input(self) -> None:
        port = await self._ensure_open()
        await self._guarded(port.reset_input_buffer)

    @staticmethod
    def _read_slice(port: Port) -> bytes:
        waiting = port.in_waiting
        data: bytes = port.read(waiting or 1)
        return data

    async def _ensure_open(self) -> Port:
        if self._port is not None:
            return self._port
        now = time.monotonic()
        if now < self._retry_at:
            raise Unreachable(f"{self.name} at {self.url} is down ({self._down_reason}); retrying")
        try:
            self._port = await self._call(self._open_port)
        except (*PORT_ERRORS, ValueError) as exc:
            self._mark_down(str(exc))
            raise Unreachable(f"{self.name} at {self.url}: cannot open: {exc}") from exc
        if self._down_reason is not None:
            self._log.info("serial part is back", was=self._down_reason)
        self._down_reason = None
        self._retry_delay = REOPEN_INITIAL_S
        return self._port

    def _open_port(self) -> Port:
        port = self._opener(self.url, baudrate=self.baudrate, timeout=READ_SLICE_S, write_timeout=1.0)
        port.reset_input_buffer()
        return port

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(*PORT_ERRORS):
                port.close()

    def _mark_down(self, reason: str) -> None:
        if self._down_reason is None:
            self._log.warning("serial part unreachable", reason=reason)
        self._down_reason = reason
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, REOPEN_MAX_S)

    async def _guarded(self, func: Callable[..., _T], *args: object) -> _T:
        try:
            return await self._call(func, *args)
        except PORT_ERRORS as exc:
            await self._call(self._close_port)
            self._mark_down(str(exc))
            raise Unreachable(f"{self.name} at {self.url}: {exc}") from exc

    async def _call(self, func: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)
