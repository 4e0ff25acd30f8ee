"""The hardware ports the agent talks to, and the plain values they report.

Each port is a small Protocol; the agent never knows whether a UART, a pseudo-terminal or a fake
sits behind it. Reads of a part that does not answer return a status saying so (`reachable`
False) rather than raising, because health reporting must go on when a part is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from firmware_protocols.serial.escpos import Condition

TtsState = Literal["idle", "busy", "unreachable"]
PrinterState = Condition | Literal["unreachable"]
Registration = Literal["home", "roaming", "searching", "denied", "not_registered", "unknown"]


@dataclass(frozen=True, slots=True)
class CellInfo:
    rat: str | None = None  # LTE, GSM, ...
    mcc: int | None = None
    mnc: int | None = None
    area: str | None = None  # TAC or LAC, hex
    cell_id: str | None = None  # hex
    rsrp_dbm: int | None = None
    sinr: int | None = None


@dataclass(frozen=True, slots=True)
class ModemStatus:
    reachable: bool
    signal_dbm: int | None = None
    signal_bars: int = 0
    registration: Registration = "unknown"
    cell: CellInfo = field(default_factory=CellInfo)
    gps: tuple[float, float] | None = None  # (lat, lon) where the modem has a GNSS fix
    iccid: str | None = None
    imei: str | None = None
    model: str | None = None
    revision: str | None = None
    error: str | None = None  # why it is unreachable, or what it refused


@dataclass(frozen=True, slots=True)
class PrinterStatusReport:
    state: PrinterState
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SystemStatus:
    load_1m: float | None = None
    mem_available_kb: int | None = None
    disk_free_kb: int | None = None
    cpu_temp_c: float | None = None
    cpu_pct: float | None = None  # busy share of all cores since the previous reading
    battery_pct: int | None = None  # None: no battery (mains powered)
    charging: bool | None = None


class TtsChip(Protocol):
    async def speak(self, text: str, *, volume: int) -> None:
        """Have the chip say `text` at `volume` (0-10); return once it has started speaking.

        Raises `Unreachable` when the chip does not answer and `HardwareError` when it refuses.
        """
        ...

    async def state(self) -> TtsState: ...

    async def stop(self) -> None: ...


class Modem(Protocol):
    async def status(self) -> ModemStatus: ...


class Printer(Protocol):
    async def print_receipt(self, data: bytes) -> None:
        """Send an ESC/POS receipt; raises `Unreachable` or `HardwareError` (paper out, cover open)."""
        ...

    async def status(self) -> PrinterStatusReport: ...


class SystemInfo(Protocol):
    async def status(self) -> SystemStatus: ...
