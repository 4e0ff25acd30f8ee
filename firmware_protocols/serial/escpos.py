"""ESC/POS for the POS terminal's thermal receipt printer, sans-IO.

    receipt = Receipt().init().chinese(True).align(Align.CENTER).size(2, 2).text("好店").line()...
    printer.write(receipt.encode())

Commands (Epson "ESC/POS Command Reference"; FS & and FS . from the Chinese-character command
set that GBK printers such as Xprinter and Gprinter implement):

    ESC @        1B 40          initialise
    ESC a n      1B 61 n        align: 0 left, 1 centre, 2 right (ASCII '0'-'2' also accepted)
    ESC E n      1B 45 n        bold on when bit 0 of n is set
    GS ! n       1D 21 n        character size: width-1 in bits 4-6, height-1 in bits 0-2
    FS &         1C 26          Chinese (double-byte GBK) mode on
    FS .         1C 2E          Chinese mode off
    LF           0A             print the line and feed one
    ESC d n      1B 64 n        print and feed n lines
    GS V m       1D 56 m        cut: m 0/48 full, 1/49 partial
    GS V m n     1D 56 m n      feed n then cut: m 65 full, 66 partial
    DLE EOT n    10 04 n        real-time status request, n 1-4; the printer answers one byte

Status byte (answer to DLE EOT n): bits 1 and 4 are always 1, bits 0 and 7 always 0. n=1 printer:
bit 3 offline. n=2 offline cause: bit 2 cover open, bit 5 stopped by paper end, bit 6 error.
n=3 error cause: bit 3 auto-cutter, bit 5 unrecoverable, bit 6 auto-recoverable. n=4 paper
sensor: bits 2-3 roll near end, bits 5-6 roll end.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal, Self

from firmware_protocols.errors import CodecError
from firmware_protocols.serial._stream import ByteStream

ESC, GS, FS, DLE, EOT, LF = 0x1B, 0x1D, 0x1C, 0x10, 0x04, 0x0A
# A run of text longer than this with no command after it is line noise, not a receipt line.
MAX_TEXT = 4096


Condition = Literal["ok", "paper_low", "paper_out", "cover_open", "error", "offline"]


class Align(enum.IntEnum):
    LEFT = 0
    CENTER = 1
    RIGHT = 2


@dataclass(frozen=True, slots=True)
class Init:
    pass


@dataclass(frozen=True, slots=True)
class SetAlign:
    align: Align


@dataclass(frozen=True, slots=True)
class Bold:
    on: bool


@dataclass(frozen=True, slots=True)
class Size:
    width: int = 1
    height: int = 1


@dataclass(frozen=True, slots=True)
class ChineseMode:
    on: bool


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class LineFeed:
    pass


@dataclass(frozen=True, slots=True)
class FeedLines:
    lines: int


@dataclass(frozen=True, slots=True)
class Cut:
    partial: bool = False
    feed: int | None = None  # lines to feed before cutting (GS V 65/66 n)


@dataclass(frozen=True, slots=True)
class StatusRequest:
    kind: int  # 1 printer, 2 offline cause, 3 error cause, 4 paper sensor


Command = Init | SetAlign | Bold | Size | ChineseMode | Text | LineFeed | FeedLines | Cut | StatusRequest


def _byte(value: int, what: str) -> int:
    if not 0 <= value <= 255:
        raise ValueError(f"{what} {value} does not fit in a byte")
    return value


def encode(commands: Iterable[Command]) -> bytes:  # noqa: PLR0912 - one branch per command
    """The bytes of `commands`; ValueError for text the printer cannot take in its current mode."""
    out = bytearray()
    chinese = False
    for command in commands:
        match command:
            case Init():
                out += bytes((ESC, 0x40))
                chinese = False
            case SetAlign(align):
                out += bytes((ESC, 0x61, Align(align)))
            case Bold(on):
                out += bytes((ESC, 0x45, int(on)))
            case Size(width, height):
                if not (1 <= width <= 8 and 1 <= height <= 8):
                    raise ValueError(f"character size {width}x{height}: each must be 1-8")
                out += bytes((GS, 0x21, (width - 1) << 4 | (height - 1)))
            case ChineseMode(on):
                out += bytes((FS, 0x26 if on else 0x2E))
                chinese = on
            case Text(text):
                out += _encode_text(text, chinese=chinese)
            case LineFeed():
                out.append(LF)
            case FeedLines(lines):
                out += bytes((ESC, 0x64, _byte(lines, "feed lines")))
            case Cut(partial, None):
                out += bytes((GS, 0x56, int(partial)))
            case Cut(partial, feed):
                out += bytes((GS, 0x56, 66 if partial else 65, _byte(feed or 0, "feed before cut")))
            case StatusRequest(kind):
                if kind not in (1, 2, 3, 4):
                    raise ValueError(f"status request n={kind}: must be 1-4")
                out += bytes((DLE, EOT, kind))
    return bytes(out)


def _encode_text(text: str, *, chinese: bool) -> bytes:
    if not text:
        raise ValueError("empty text")
    if chinese:
        try:
            data = text.encode("gbk")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{text!r} has a character outside GBK at {exc.start}") from exc
    elif text.isascii():
        data = text.encode("ascii")
    else:
        raise ValueError(f"{text!r} needs Chinese mode (FS &) first")
    if any(byte < 0x20 or byte == 0x7F for byte in data):
        raise ValueError(f"{text!r} holds control characters; use LineFeed for new lines")
    return data


class Receipt:
    """A receipt built command by command; `encode()` gives the bytes for the printer."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def _add(self, command: Command) -> Self:
        self.commands.append(command)
        return self

    def init(self) -> Self:
        return self._add(Init())

    def align(self, align: Align) -> Self:
        return self._add(SetAlign(align))

    def bold(self, on: bool = True) -> Self:
        return self._add(Bold(on))

    def size(self, width: int = 1, height: int = 1) -> Self:
        return self._add(Size(width, height))

    def chinese(self, on: bool = True) -> Self:
        return self._add(ChineseMode(on))

    def text(self, text: str) -> Self:
        return self._add(Text(text))

    def line(self, text: str = "") -> Self:
        if text:
            self.text(text)
        return self._add(LineFeed())

    def feed(self, lines: int) -> Self:
        return self._add(FeedLines(lines))

    def cut(self, *, partial: bool = False, feed: int | None = None) -> Self:
        return self._add(Cut(partial, feed))

    def encode(self) -> bytes:
        return encode(self.commands)


class CommandDecoder:
    """Host → printer bytes, split anywhere, back into commands (what the virtual printer reads).

    A text run is handed out when the command after it arrives; every receipt line ends in LF.
    """

    def __init__(self) -> None:
        self._stream = ByteStream()
        self.chinese = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.feed(data)

    def __iter__(self) -> CommandDecoder:
        return self

    def __next__(self) -> Command:
        command = self.next_command()
        if command is None:
            raise StopIteration
        return command

    def next_command(self) -> Command | None:  # noqa: PLR0911, PLR0912 - one branch per command
        stream = self._stream
        if not stream:
            return None
        at = stream.offset
        first = stream[0]
        if first >= 0x20 and first != 0x7F:
            return self._text()
        if first == LF:
            stream.take(1)
            return LineFeed()
        if first not in (ESC, GS, FS, DLE):
            stream.take(1)
            raise CodecError(at, f"unknown control byte 0x{first:02X}")
        if len(stream) < 2:
            return None
        second = stream[1]
        match first, second:
            case (0x1B, 0x40):
                stream.take(2)
                self.chinese = False
                return Init()
            case (0x1C, 0x26):
                stream.take(2)
                self.chinese = True
                return ChineseMode(on=True)
            case (0x1C, 0x2E):
                stream.take(2)
                self.chinese = False
                return ChineseMode(on=False)
            case (0x1B, 0x61) | (0x1B, 0x45) | (0x1D, 0x21) | (0x1B, 0x64) | (0x1D, 0x56) | (0x10, 0x04):
                pass
            case _:
                stream.take(2)
                raise CodecError(at, f"unknown command {first:02X} {second:02X}")
        if len(stream) < 3:
            return None
        n = stream[2]
        if (first, second) == (GS, 0x56) and n in (65, 66):
            if len(stream) < 4:
                return None
            feed = stream.take(4)[3]
            return Cut(partial=n == 66, feed=feed)
        stream.take(3)
        match first, second:
            case (0x1B, 0x61):
                align = n - 0x30 if n in (0x30, 0x31, 0x32) else n
                if align not in (0, 1, 2):
                    raise CodecError(at + 2, f"ESC a {n}: alignment must be 0-2")
                return SetAlign(Align(align))
            case (0x1B, 0x45):
                return Bold(bool(n & 1))
            case (0x1D, 0x21):
                if n & 0x88:
                    raise CodecError(at + 2, f"GS ! 0x{n:02X}: width and height are 1-8")
                return Size(width=(n >> 4) + 1, height=(n & 7) + 1)
            case (0x1B, 0x64):
                return FeedLines(n)
            case (0x1D, 0x56):
                if n not in (0, 1, 48, 49):
                    raise CodecError(at + 2, f"GS V {n}: unknown cut mode")
                return Cut(partial=n in (1, 49))
            case _:  # DLE EOT n
                if n not in (1, 2, 3, 4):
                    raise CodecError(at + 2, f"DLE EOT {n}: status request must be 1-4")
                return StatusRequest(n)

    def _text(self) -> Text | None:
        stream = self._stream
        end = 0
        while end < len(stream) and stream[end] >= 0x20 and stream[end] != 0x7F:
            end += 1
            if end > MAX_TEXT:
                at = stream.offset
                stream.take(end)
                raise CodecError(at, f"text run over {MAX_TEXT} bytes without a line feed; dropped")
        if end == len(stream):
            return None  # the run may go on in the next read
        at = stream.offset
        raw = stream.take(end)
        try:
            return Text(raw.decode("gbk" if self.chinese else "ascii"))
        except UnicodeDecodeError as exc:
            mode = "GBK (Chinese mode)" if self.chinese else "ASCII (Chinese mode off)"
            raise CodecError(at + exc.start, f"text is not valid {mode}: {exc.reason}") from None


# -- real-time status ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrinterStatus:
    """What the four DLE EOT answers say, merged. Fields stay False until their answer arrived."""

    offline: bool = False
    cover_open: bool = False
    paper_out: bool = False
    paper_near_end: bool = False
    cutter_error: bool = False
    unrecoverable_error: bool = False
    recoverable_error: bool = False
    answered: frozenset[int] = field(default_factory=frozenset)

    @property
    def state(self) -> Condition:
        """One word for the fleet: ok, paper_out, cover_open, error, offline, paper_low."""
        if self.paper_out:
            return "paper_out"
        if self.cover_open:
            return "cover_open"
        if self.cutter_error or self.unrecoverable_error or self.recoverable_error:
            return "error"
        if self.offline:
            return "offline"
        if self.paper_near_end:
            return "paper_low"
        return "ok"


_FIXED_MASK, _FIXED_VALUE = 0x93, 0x12


def parse_status(kind: int, value: int, *, offset: int = 0, into: PrinterStatus | None = None) -> PrinterStatus:
    """Read the printer's answer `value` to DLE EOT `kind`, merged into `into`."""
    if kind not in (1, 2, 3, 4):
        raise CodecError(offset, f"no status request n={kind}")
    if value & _FIXED_MASK != _FIXED_VALUE:
        raise CodecError(offset, f"status byte 0x{value:02X} for n={kind}: fixed bits are not 0xx1xx10")
    base = into or PrinterStatus()
    answered = base.answered | {kind}
    if kind == 1:
        return replace(base, answered=answered, offline=bool(value & 0x08))
    if kind == 2:
        return replace(
            base, answered=answered, cover_open=bool(value & 0x04), paper_out=bool(value & 0x20) or base.paper_out
        )
    if kind == 3:
        return replace(
            base,
            answered=answered,
            cutter_error=bool(value & 0x08),
            unrecoverable_error=bool(value & 0x20),
            recoverable_error=bool(value & 0x40),
        )
    return replace(base, answered=answered, paper_near_end=value & 0x0C == 0x0C, paper_out=value & 0x60 == 0x60)


def status_byte(kind: int, status: PrinterStatus) -> int:
    """The byte a printer in `status` answers to DLE EOT `kind` (for the virtual printer)."""
    bits = {
        1: 0x08 * status.offline,
        2: 0x04 * status.cover_open + 0x20 * status.paper_out + 0x40 * (status.state == "error"),
        3: 0x08 * status.cutter_error + 0x20 * status.unrecoverable_error + 0x40 * status.recoverable_error,
        4: 0x0C * status.paper_near_end + 0x60 * status.paper_out,
    }
    if kind not in bits:
        raise ValueError(f"no status request n={kind}")
    return _FIXED_VALUE | bits[kind]
