"""Where a device learns the time, each behind one port (`TimeSource`), best first:

    system    the kernel says NTP keeps the board's clock synchronised (adjtimex): offset 0
    ntp       an SNTP query of our own (RFC 4330) to the configured servers
    modem     the 4G modem's network time: AT+QLTS=2, else AT+CCLK? (`firmware_protocols.serial.at`)
    server    the fleet server's signed time: GET <time_url>?device_id=&nonce= (`TimeReference`)

A sample is an offset to add to the board's clock and how far it may be wrong (half the round
trip; a second for the modem's whole-second clock). Only the server's time is signed: the
timekeeper lets it overrule the others (`timekeeper`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import secrets
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from edge_agent.clock import Clock
from edge_agent.errors import AgentError
from firmware_protocols.errors import MessageError, SignatureError
from firmware_protocols.fields import TIME_FLOOR_MS
from firmware_protocols.messages import TimeReference, parse_payload
from firmware_protocols.serial.at import NetworkTime
from firmware_protocols.signing import Verifier
from mqtt_link.link import NO_CHECK_TIME

NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 to 1970-01-01


class TimeSourceError(AgentError):
    """A time source that gave no usable time; says which and why."""


@dataclass(frozen=True, slots=True)
class TimeSample:
    source: str
    offset_ms: int  # trusted time = board clock + offset
    error_ms: int  # how far the offset may be wrong
    signed: bool = False
    max_skew_s: int | None = None  # the broker's allowance, where the server said it


class TimeSource(Protocol):
    name: str

    async def sample(self, board: Clock) -> TimeSample:
        """A fresh sample, or `TimeSourceError` saying why none."""
        ...


class _Timex(ctypes.Structure):
    _fields_ = [  # struct timex of <sys/timex.h>, its tail as padding
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_long * 24),
    ]


class SystemSync:
    """The kernel's own word that NTP (chrony, systemd-timesyncd) keeps the clock right."""

    name = "system"
    TIME_ERROR = 5

    async def sample(self, board: Clock) -> TimeSample:
        library = ctypes.util.find_library("c")
        if library is None:
            raise TimeSourceError("system: no C library to ask adjtimex")
        timex = _Timex()
        state = ctypes.CDLL(library, use_errno=True).adjtimex(ctypes.byref(timex))
        if state < 0:
            raise TimeSourceError(f"system: adjtimex failed (errno {ctypes.get_errno()})")
        if state == self.TIME_ERROR:
            raise TimeSourceError("system: the kernel clock is not synchronised (no NTP daemon keeps it)")
        # The system clock is right; the board's clock is the system's except in tests.
        return TimeSample(self.name, time.time_ns() // 1_000_000 - board.now_ms(), max(1, timex.maxerror // 1000))


def _ntp_time(data: bytes, at: int) -> int:
    seconds, fraction = (int(v) for v in struct.unpack_from("!II", data, at))
    return (seconds - NTP_EPOCH_OFFSET_S) * 1000 + (fraction * 1000 >> 32)


class _Answer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, _addr: tuple[str | int, ...]) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


class Sntp:
    """One SNTP v4 query to each server in turn until one answers (RFC 4330)."""

    name = "ntp"

    def __init__(self, servers: list[str], *, timeout_s: float = 2.0) -> None:
        self.servers = servers
        self.timeout_s = timeout_s

    async def sample(self, board: Clock) -> TimeSample:
        if not self.servers:
            raise TimeSourceError("ntp: no servers configured")
        problems = []
        for server in self.servers:
            try:
                return await self._query(server, board)
            except (OSError, TimeoutError, TimeSourceError) as exc:
                problems.append(f"{server}: {exc or type(exc).__name__}")
        raise TimeSourceError("ntp: " + "; ".join(problems))

    async def _query(self, server: str, board: Clock) -> TimeSample:
        host, _, port = server.rpartition(":") if ":" in server else (server, "", "123")
        loop = asyncio.get_running_loop()
        transport, answer = await loop.create_datagram_endpoint(_Answer, remote_addr=(host, int(port)))
        try:
            # Our transmit time goes out as random bits: the server echoes it as the originate
            # time, so an answer that does not carry it is not an answer to us.
            cookie = secrets.token_bytes(8)
            sent = board.now_ms()
            transport.sendto(b"\x23" + bytes(39) + cookie)
            data = await asyncio.wait_for(answer.reply, self.timeout_s)
            received = board.now_ms()
        finally:
            transport.close()
        if len(data) < 48 or data[24:32] != cookie:
            raise TimeSourceError("answer is not to our query")
        leap, mode, stratum = data[0] >> 6, data[0] & 7, data[1]
        if mode != 4 or leap == 3 or not 1 <= stratum <= 15:
            raise TimeSourceError(f"server not synchronised (mode {mode}, leap {leap}, stratum {stratum})")
        t2, t3 = _ntp_time(data, 32), _ntp_time(data, 40)
        if t3 < TIME_FLOOR_MS:
            raise TimeSourceError("server gave a time before 2023")
        offset = ((t2 - sent) + (t3 - received)) // 2
        return TimeSample(self.name, offset, max(1, (received - sent - (t3 - t2)) // 2))


class NetworkClock(Protocol):
    async def network_time(self) -> NetworkTime | None:
        """The modem's network time, None if it has none."""
        ...


class ModemTime:
    """The cellular network's time, through the modem (NITZ as the module keeps it)."""

    name = "modem"

    def __init__(self, modem: NetworkClock) -> None:
        self.modem = modem

    async def sample(self, board: Clock) -> TimeSample:
        network = await self.modem.network_time()
        now = board.now_ms()
        if network is None:
            raise TimeSourceError("modem: no network time (not registered, or the network sends none)")
        if network.utc_ms < TIME_FLOOR_MS:
            raise TimeSourceError(f"modem: its clock says {network.utc_ms // 1000} s since 1970: never set")
        # Whole seconds, truncated: the true time is up to a second later.
        return TimeSample(self.name, network.utc_ms + 500 - now, 1000)


class ServerTime:
    """The fleet server's clock, signed with a key the device trusts, fresh by our nonce."""

    name = "server"

    def __init__(
        self,
        url: str,
        device_id: str,
        verifier: Verifier,
        *,
        ca_file: Path | None = None,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.device_id = device_id
        self._verifier = verifier
        self._ca_file = ca_file
        self._timeout_s = timeout_s
        self._transport = transport

    def _tls(self) -> ssl.SSLContext:
        # Who signed the certificate is checked, not its dates: the board's clock cannot judge
        # them yet, and the answer is signed anyway.
        context = ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file else None)
        context.verify_flags |= NO_CHECK_TIME
        return context

    async def sample(self, board: Clock) -> TimeSample:
        nonce = secrets.token_urlsafe(18)
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout_s, verify=self._tls(), transport=self._transport
            ) as client:
                sent = board.now_ms()
                answer = await client.get(self.url, params={"device_id": self.device_id, "nonce": nonce})
                received = board.now_ms()
        except httpx.HTTPError as exc:
            raise TimeSourceError(f"server: {self.url}: {exc or type(exc).__name__}") from exc
        if answer.status_code != 200:
            raise TimeSourceError(f"server: {self.url} answered {answer.status_code}")
        try:
            reference = parse_payload(TimeReference, answer.content)
            self._verifier.verify(reference)
        except (MessageError, SignatureError) as exc:
            raise TimeSourceError(f"server: answer refused: {exc}") from exc
        if reference.nonce != nonce or reference.device_id != self.device_id:
            raise TimeSourceError("server: answer is not to our request (nonce or device id differ)")
        offset = reference.ts - (sent + received) // 2
        return TimeSample(
            self.name, offset, max(1, (received - sent) // 2), signed=True, max_skew_s=reference.max_skew_s
        )


def configured_sources(
    sources: Sequence[str],
    *,
    device_id: str,
    modem: object,
    verifier: Verifier,
    ntp_servers: list[str],
    time_url: str | None,
    ca_file: Path | None = None,
) -> list[TimeSource]:
    """The sources a device's configuration names, in its order, leaving out those it cannot
    have (no NTP servers, a modem without network time, no time URL)."""
    made: list[TimeSource] = []
    for name in sources:
        if name == "system":
            made.append(SystemSync())
        elif name == "ntp" and ntp_servers:
            made.append(Sntp(ntp_servers))
        elif name == "modem" and callable(getattr(modem, "network_time", None)):
            made.append(ModemTime(modem))  # type: ignore[arg-type]  # checked just above
        elif name == "server" and time_url:
            made.append(ServerTime(time_url, device_id, verifier, ca_file=ca_file))
    return made
