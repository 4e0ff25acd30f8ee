"""The receipt printer port: an ESC/POS thermal printer on a UART, and a fake for unit tests.

Before a receipt goes out the printer's real-time status is read (DLE EOT 1-4): printing into a
printer with no paper or an open cover loses the receipt silently, so that is refused with the
reason instead, and the fleet sees the printer's state in the device's health.
"""

from __future__ import annotations

import structlog

from edge_agent.hardware.errors import HardwareError, Unreachable
from edge_agent.hardware.ports import PrinterState, PrinterStatusReport
from edge_agent.hardware.serial_line import SerialLine
from firmware_protocols.errors import CodecError
from firmware_protocols.serial import escpos

log = structlog.get_logger(__name__)

# A printer answers DLE EOT within milliseconds even while printing (it is "real-time").
ANSWER_TIMEOUT_S = 0.5
NOT_PRINTABLE = {"paper_out", "cover_open", "error", "offline"}


class SerialPrinter:
    def __init__(self, line: SerialLine) -> None:
        self.line = line
        self._log = log.bind(part=line.name, port=line.url)

    async def status(self) -> PrinterStatusReport:
        try:
            async with self.line.session():
                return await self._status()
        except Unreachable as exc:
            return PrinterStatusReport("unreachable", str(exc))

    async def print_receipt(self, data: bytes) -> None:
        async with self.line.session():
            report = await self._status()
            if report.state in NOT_PRINTABLE:
                raise HardwareError(f"printer on {self.line.url} cannot print: {report.state}")
            await self.line.write(data)

    async def _status(self) -> PrinterStatusReport:
        status = escpos.PrinterStatus()
        unreadable: list[str] = []
        for kind in (1, 2, 3, 4):
            await self.line.discard_input()
            await self.line.write(escpos.encode([escpos.StatusRequest(kind)]))
            answer = await self.line.read(ANSWER_TIMEOUT_S)
            if not answer:
                raise Unreachable(f"printer on {self.line.url} did not answer DLE EOT {kind}")
            try:
                # The answer is the last byte: anything before it is line noise.
                status = escpos.parse_status(kind, answer[-1], offset=len(answer) - 1, into=status)
            except CodecError as exc:
                self._log.warning("unreadable printer status", request=kind, error=str(exc))
                unreadable.append(f"DLE EOT {kind}: {exc.reason}")
        return PrinterStatusReport(status.state, "; ".join(unreadable) or None)


class FakePrinter:
    """An in-memory printer for unit tests."""

    def __init__(self) -> None:
        self.printed: list[bytes] = []
        self.state: PrinterState = "ok"

    async def status(self) -> PrinterStatusReport:
        return PrinterStatusReport(self.state)

    async def print_receipt(self, data: bytes) -> None:
        if self.state in NOT_PRINTABLE or self.state == "unreachable":
            raise HardwareError(f"fake printer cannot print: {self.state}")
        self.printed.append(data)
