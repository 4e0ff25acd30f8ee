"""Virtual hardware on pseudo-terminals: a TTS chip, a 4G modem and a receipt printer.

Each peer opens a pty pair (`os.openpty`), puts the line in raw mode, and links its slave side
at a stable path (`link`), the way socat's `link=` does. The agent opens that path with pyserial
exactly as it opens a UART, so its real serial code runs. A peer can `vanish()` (the master side
closes: the agent's reads fail with EIO, and the link is gone) and `appear()` again on a new pty
behind the same link, and has switchable faults: a chip that stays busy or stops answering, a
modem that loses its network or its SIM or has a weak signal, a printer out of paper or with its
cover open, and garbage bytes on any line.

The peers speak the same codecs as the agent (`firmware_protocols.serial`), from the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import tty
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from firmware_protocols.errors import CodecError
from firmware_protocols.serial import at, escpos, tts

log = structlog.get_logger(__name__)


class PtyPeer:
    """A pseudo-terminal whose master side this object plays, linked at `link`."""

    kind = "peer"

    def __init__(self, link: Path, *, seed: int | None = None) -> None:
        self.link = link
        self.pty_name = ""
        self.silent = False  # fault: read everything, answer nothing
        self.bytes_in = 0
        self.codec_errors = 0
        self._random = random.Random(seed)  # noqa: S311 - line noise, not security.
        self._master: int | None = None
        self._slave: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log = log.bind(peer=self.kind, link=str(link))

    async def __aenter__(self) -> Self:
        self.appear()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.vanish()

    @property
    def present(self) -> bool:
        return self._master is not None

    def appear(self) -> None:
        """Open a new pty and point the link at it."""
        if self._master is not None:
            return
        self._loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        # Raw from the start: no echo, no CR/LF translation, before the agent opens its side.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_name = os.ttyname(slave)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        staging = self.link.with_name(self.link.name + ".new")
        staging.unlink(missing_ok=True)
        staging.symlink_to(self.pty_name)
        staging.replace(self.link)
        self._loop.add_reader(master, self._readable)
        self._log.info("virtual peer up", pty=self.pty_name)

    def vanish(self) -> None:
        """Close the pty (as a device unplugged) and remove the link."""
        if self._master is None:
            return
        assert self._loop is not None  # noqa: S101 - set in appear()
        self._loop.remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        with contextlib.suppress(FileNotFoundError):
            if self.link.is_symlink() and str(self.link.readlink()) == self.pty_name:
                self.link.unlink()
        self._log.info("virtual peer gone", pty=self.pty_name)

    def send(self, data: bytes) -> None:
        if self._master is None or self.silent:
            return
        try:
            os.write(self._master, data)
        except BlockingIOError:
            self._log.warning("pty full, bytes dropped", size=len(data))
        except OSError as exc:
            self._log.warning("pty write failed", error=str(exc))

    def send_garbage(self, size: int = 24) -> bytes:
        """Line noise: random bytes, the way a loose cable or a rebooting part sends them."""
        noise = bytes(self._random.randrange(256) for _ in range(size))
        self.send(noise)
        return noise

    def _readable(self) -> None:
        assert self._master is not None  # noqa: S101 - reader removed before closing
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while no one has the slave side open
        self.bytes_in += len(data)
        self.received(data)

    def received(self, data: bytes) -> None:
        raise NotImplementedError


# -- TTS chip ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    tags: dict[str, int]
    at: float


class VirtualTtsChip(PtyPeer):
    """A SYN6288 / XFS5152 that "speaks" for `seconds_per_char` per character of text.

    `on_speak`, if given, is called with each utterance (the demo renders it to a WAV file).
    Faults: `silent`, `stuck_busy`, `send_garbage()`.
    """

    kind = "tts"

    def __init__(
        self,
        link: Path,
        *,
        dialect: tts.Dialect | str = tts.Dialect.SYN6288,
        seconds_per_char: float = 0.01,
        on_speak: Callable[[Utterance], Coroutine[Any, Any, None]] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(link, seed=seed)
        self.dialect = tts.Dialect(dialect)
        self.seconds_per_char = seconds_per_char
        self.on_speak = on_speak
        self.stuck_busy = False
        self.spoken: list[Utterance] = []
        self._busy_until = 0.0
        self._decoder = tts.FrameDecoder(self.dialect)
        self._tasks: set[asyncio.Task[None]] = set()

    def appear(self) -> None:
        self._decoder = tts.FrameDecoder(self.dialect)
        super().appear()
        self.send(bytes((tts.Reply.READY,)))  # what a chip says after power-on

    @property
    def busy(self) -> bool:
        return self.stuck_busy or time.monotonic() < self._busy_until

    def received(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                frame = self._decoder.next_frame()
            except CodecError as exc:
                self.codec_errors += 1
                self._log.info("frame not understood", error=str(exc))
                self.send(bytes((tts.Reply.ERROR,)))
                continue
            if frame is None:
                return
            self._handle(frame)

    def _handle(self, frame: tts.Frame) -> None:
        self.send(bytes((tts.Reply.RECEIVED,)))
        if isinstance(frame, tts.Speak):
            text, tags = tts.split_markup(frame.text)
            utterance = Utterance(text, tags, time.time())
            self.spoken.append(utterance)
            self._busy_until = time.monotonic() + len(text) * self.seconds_per_char
            if self.on_speak is not None:
                task = asyncio.get_running_loop().create_task(self.on_speak(utterance))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif frame.command is tts.Command.STATUS:
            self.send(bytes((tts.Reply.BUSY if self.busy else tts.Reply.IDLE,)))
        elif frame.command is tts.Command.STOP:
            self._busy_until = 0.0


# -- modem ---------------------------------------------------------------------------------------


@dataclass
class ModemState:
    signal_dbm: int | None = -71
    registered: bool = True
    roaming: bool = False
    sim: bool = True
    iccid: str = "89860025128306012474"
    imei: str = "867698041234566"
    tac: str = "D509"
    cell_id: str = "80D413D"
    mcc: int = 460
    mnc: int = 0
    echo: bool = True
    # The network's time (NITZ): sent while registered; False, a network that sends none.
    network_time: bool = True


class VirtualModem(PtyPeer):
    """A Quectel EC200U-like modem answering AT commands from `state`.

    Faults: `set_registered(False)` (with the +CREG/+CEREG URCs a real one sends), a weak
    `state.signal_dbm`, `state.sim = False`, `silent`, `send_garbage()`.
    """

    kind = "modem"

    def __init__(self, link: Path, *, state: ModemState | None = None, seed: int | None = None) -> None:
        super().__init__(link, seed=seed)
        self.state = state or ModemState()
        self.commands: list[str] = []
        self._line = bytearray()
        self._appeared = time.monotonic()

    def appear(self) -> None:
        self._line.clear()
        self._appeared = time.monotonic()
        super().appear()
        self.send(b"\r\nRDY\r\n\r\n+CPIN: READY\r\n" if self.state.sim else b"\r\nRDY\r\n")

    def set_registered(self, registered: bool) -> None:
        self.state.registered = registered
        self.send(f"\r\n+CREG: {self._stat()}\r\n\r\n+CEREG: {self._stat()}\r\n".encode())

    def _stat(self) -> int:
        if not self.state.sim:
            return 0
        if not self.state.registered:
            return 2
        return 5 if self.state.roaming else 1

    def received(self, data: bytes) -> None:
        for byte in data:
            if byte == 0x0D:
                command = self._line.decode("ascii", errors="replace").strip()
                self._line.clear()
                if command:
                    self._answer(command)
            elif byte != 0x0A:
                self._line.append(byte)
                if len(self._line) > at.MAX_LINE:
                    self._line.clear()

    def _answer(self, command: str) -> None:
        self.commands.append(command)
        state = self.state
        if state.echo:
            self.send(command.encode() + b"\r")
        lines, final = self._respond(command.upper() if command.upper().startswith("AT") else command)
        self.send(b"".join(b"\r\n" + line.encode() + b"\r\n" for line in [*lines, final]))

    def _respond(self, command: str) -> tuple[list[str], str]:  # noqa: PLR0911 - one answer per command
        state = self.state
        stat = self._stat()
        registered = stat in (1, 5)
        if command in ("AT", "ATE0", "ATE1"):
            if command != "AT":
                state.echo = command == "ATE1"
            return [], "OK"
        if command == "AT+CSQ":
            dbm = state.signal_dbm
            csq = 99 if dbm is None else max(0, min(31, (dbm + 113) // 2))
            return [f"+CSQ: {csq},99"], "OK"
        if command == "AT+CREG?":
            return [f"+CREG: 0,{stat}"], "OK"
        if command == "AT+CEREG?":
            location = f',"{state.tac}","{state.cell_id}",7' if registered else ""
            return [f"+CEREG: 2,{stat}{location}"], "OK"
        if command == 'AT+QENG="SERVINGCELL"':
            if not registered:
                return ['+QENG: "servingcell","SEARCH"'], "OK"
            dbm = state.signal_dbm or -113
            return [
                f'+QENG: "servingcell","NOCONN","LTE","FDD",{state.mcc},{state.mnc:02d},{state.cell_id},'
                f"188,1350,3,5,5,{state.tac},{dbm - 20},-9,{dbm},12,40"
            ], "OK"
        if command in ("AT+QCCID", "AT+CCID"):
            if not state.sim:
                return [], "+CME ERROR: 10"
            return [f"{command[2:]}: {state.iccid}"], "OK"
        if command == "ATI":
            return ["Quectel", "EC200U", "Revision: EC200UCNAAR03A03M08"], "OK"
        if command in ("AT+CGSN", "AT+GSN"):
            return [state.imei], "OK"
        if command in ("AT+QLTS=2", "AT+CCLK?"):
            return self._time(command, registered and state.network_time), "OK"
        return [], "ERROR"

    def uptime_s(self) -> int:
        return int(time.monotonic() - self._appeared)

    def _time(self, command: str, known: bool) -> list[str]:
        """Beijing time (+32 quarter hours) from the network; unknown: an empty +QLTS and the
        module's power-on default for +CCLK (1980-01-06, counting since it appeared)."""
        if command == "AT+QLTS=2":
            when = time.gmtime(time.time() + 8 * 3600)
            return [f'+QLTS: "{time.strftime("%Y/%m/%d,%H:%M:%S", when)}+32,0"' if known else '+QLTS: ""']
        if known:
            return [f'+CCLK: "{time.strftime("%y/%m/%d,%H:%M:%S", time.gmtime(time.time() + 8 * 3600))}+32"']
        return [f'+CCLK: "{time.strftime("%y/%m/%d,%H:%M:%S", time.gmtime(315_964_800 + self.uptime_s()))}+00"']


# -- printer -------------------------------------------------------------------------------------


@dataclass
class PrinterFaults:
    status: escpos.PrinterStatus = field(default_factory=escpos.PrinterStatus)

    def paper_out(self, out: bool = True) -> None:
        self.status = replace(self.status, paper_out=out)

    def cover_open(self, is_open: bool = True) -> None:
        self.status = replace(self.status, cover_open=is_open)


class VirtualPrinter(PtyPeer):
    """A GBK thermal printer: keeps each receipt (cut to cut) as its lines of text.

    Faults: `faults.paper_out()`, `faults.cover_open()`, `silent`, `send_garbage()`. With no paper
    it prints nothing, as a real one does.
    """

    kind = "printer"

    def __init__(self, link: Path, *, seed: int | None = None) -> None:
        super().__init__(link, seed=seed)
        self.faults = PrinterFaults()
        self.receipts: list[list[str]] = []
        self._lines: list[str] = []
        self._current = ""
        self._decoder = escpos.CommandDecoder()

    def appear(self) -> None:
        self._decoder = escpos.CommandDecoder()
        super().appear()

    def received(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                command = self._decoder.next_command()
            except CodecError as exc:
                self.codec_errors += 1
                self._log.info("bytes not understood", error=str(exc))
                continue
            if command is None:
                return
            self._handle(command)

    def _handle(self, command: escpos.Command) -> None:
        status = self.faults.status
        printing = not (status.paper_out or status.cover_open)
        match command:
            case escpos.StatusRequest(kind):
                self.send(bytes((escpos.status_byte(kind, status),)))
            case escpos.Text(text) if printing:
                self._current += text
            case escpos.LineFeed() if printing:
                self._lines.append(self._current)
                self._current = ""
            case escpos.Cut() if printing:
                self.receipts.append(self._lines)
                self._lines, self._current = [], ""
            case _:
                pass
