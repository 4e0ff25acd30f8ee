"""The 4G modem port: a Quectel-style module on a UART, and a simulated one.

`status()` asks for signal (+CSQ), LTE then 2G registration (+CEREG?/+CREG?), the serving cell
(+QENG="servingcell"), the SIM (+QCCID) and, once, the module's identity (ATI, +CGSN). A SIM
read each time is how a swapped SIM shows up. URCs that arrive meanwhile are logged.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from edge_agent.hardware.errors import Unreachable
from edge_agent.hardware.ports import CellInfo, ModemStatus, Registration
from edge_agent.hardware.serial_line import SerialLine
from firmware_protocols.errors import CodecError
from firmware_protocols.serial import at

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# Quectel documents 300 ms as the maximum response time of these queries.
COMMAND_TIMEOUT_S = 1.0

_REGISTRATION: dict[at.RegStatus, Registration] = {
    at.RegStatus.HOME: "home",
    at.RegStatus.ROAMING: "roaming",
    at.RegStatus.SEARCHING: "searching",
    at.RegStatus.DENIED: "denied",
    at.RegStatus.NOT_REGISTERED: "not_registered",
    at.RegStatus.UNKNOWN: "unknown",
}


class SerialModem:
    def __init__(self, line: SerialLine) -> None:
        self.line = line
        self._parser = at.AtParser()
        self._identity: tuple[str | None, str | None, str | None] | None = None
        self._log = log.bind(part=line.name, port=line.url)

    async def command(self, command: bytes) -> at.AtResponse:
        """Send one AT command and return its response; `Unreachable` if none comes."""
        async with self.line.session():
            if self._parser.pending is not None:
                self._parser.abandon()
            await self.line.write(self._parser.expect(command))
            deadline = time.monotonic() + COMMAND_TIMEOUT_S
            while (left := deadline - time.monotonic()) > 0:
                self._parser.feed(await self.line.read(min(left, 0.1)))
                while True:
                    try:
                        event = self._parser.next_event()
                    except CodecError as exc:
                        self._log.warning("garbage from modem ignored", error=str(exc))
                        continue
                    if event is None:
                        break
                    if isinstance(event, at.Urc):
                        self._log.info("modem reported", urc=event.line)
                        continue
                    return event
            self._parser.abandon()
            raise Unreachable(f"modem on {self.line.url} did not answer {command.decode().strip()}")

    async def status(self) -> ModemStatus:
        try:
            return await self._status()
        except Unreachable as exc:
            return ModemStatus(reachable=False, error=str(exc))

    async def _status(self) -> ModemStatus:
        errors: list[str] = []
        signal = await self._value(at.build("+CSQ"), at.parse_csq, errors)
        registration = await self._value(at.build("+CEREG", query=True), _cereg, errors)
        if registration is None or not registration.status.registered:
            creg = await self._value(at.build("+CREG", query=True), at.parse_registration, errors)
            registration = creg or registration
        cell = await self._value(at.build("+QENG", "servingcell"), at.parse_servingcell, errors)
        iccid = await self._value(at.build("+QCCID"), at.parse_iccid, errors)
        if self._identity is None:
            identity = await self._value(at.build("I"), at.parse_ati, errors)
            imei = await self._value(at.build("+CGSN"), at.parse_imei, errors)
            if identity is not None and imei is not None:
                self._identity = (imei, identity.model, identity.revision)
        imei, model, revision = self._identity or (None, None, None)
        return ModemStatus(
            reachable=True,
            signal_dbm=signal.rssi_dbm if signal else None,
            signal_bars=signal.bars if signal else 0,
            registration=_REGISTRATION[registration.status] if registration else "unknown",
            cell=CellInfo(**{f.name: getattr(cell, f.name) for f in dataclasses.fields(CellInfo)})
            if cell
            else CellInfo(),
            iccid=iccid,
            imei=imei,
            model=model,
            revision=revision,
            error="; ".join(errors) or None,
        )

    async def network_time(self) -> at.NetworkTime | None:
        """The network's time (Quectel's AT+QLTS=2, else the module clock, AT+CCLK?), None if the
        module has none or does not answer. A module clock never set (1980, 2000) is the
        caller's to refuse (`time_sources.ModemTime`)."""
        try:
            for command, parse in (
                (at.build("+QLTS", 2), at.parse_qlts),
                (at.build("+CCLK", query=True), at.parse_cclk),
            ):
                response = await self.command(command)
                try:
                    return parse(response)
                except CodecError as exc:
                    self._log.debug("no network time in answer", command=command.decode().strip(), error=exc.reason)
        except Unreachable as exc:
            self._log.info("modem gave no network time", error=str(exc))
        return None

    async def _value(self, command: bytes, parse: Callable[[at.AtResponse], _T], errors: list[str]) -> _T | None:
        """One query's value; a refused or unreadable answer is noted in `errors`, not raised."""
        response = await self.command(command)
        try:
            return parse(response)
        except CodecError as exc:
            errors.append(f"{command.decode().strip()}: {exc.reason}")
            return None


def _cereg(response: at.AtResponse) -> at.Registration:
    return at.parse_registration(response, "+CEREG")


class SimulatedModem:
    """A modem with a steady signal around `mean_dbm`, varying as a real one does, and a China
    Mobile SIM. Registered unless a test or fault model sets `registration` or `reachable`."""

    def __init__(self, mean_dbm: int = -75, spread_db: int = 6, seed: int | None = None) -> None:
        self._mean = mean_dbm
        self._spread = spread_db
        self._random = random.Random(seed)  # noqa: S311 - simulated signal, not security.
        self.iccid = f"898600{self._random.randrange(10**13):013d}"
        self.imei = f"86{self._random.randrange(10**13):013d}"
        self.registration: Registration = "home"
        self.reachable = True
        # Where the device is: a China Mobile LTE cell around the merchant, and a GNSS fix only
        # where a test or the demo gives it one. `move_to()` is how a simulated device is moved.
        self.area = f"{self._random.randrange(0x1000, 0x10000):X}"
        self.cell_id = f"{self._random.randrange(0x100000, 0x1000000):X}"
        self.gps: tuple[float, float] | None = None
        # The network's time as the simulated cell gives it: the true time, where a simulator
        # gives one (a simulated board may run a wrong clock); None, a network that sends none.
        self.network_clock: Callable[[], int] | None = None

    async def network_time(self) -> at.NetworkTime | None:
        if not self.reachable or self.registration not in ("home", "roaming") or self.network_clock is None:
            return None
        return at.NetworkTime(utc_ms=self.network_clock() // 1000 * 1000, tz_min=480)

    def move_to(self, area: str, cell_id: str, gps: tuple[float, float] | None = None) -> None:
        self.area, self.cell_id, self.gps = area, cell_id, gps

    async def status(self) -> ModemStatus:
        if not self.reachable:
            return ModemStatus(reachable=False, error="simulated: modem does not answer")
        dbm = max(-113, min(-51, round(self._random.gauss(self._mean, self._spread / 2))))
        return ModemStatus(
            reachable=True,
            signal_dbm=dbm,
            signal_bars=at.csq_to_bars((dbm + 113) // 2),
            registration=self.registration,
            cell=CellInfo(rat="LTE", mcc=460, mnc=0, area=self.area, cell_id=self.cell_id),
            gps=self.gps,
            iccid=self.iccid,
            imei=self.imei,
        )
