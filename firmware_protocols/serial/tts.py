"""Frames of the SYN6288 / XFS5152 family of Mandarin text-to-speech chips, sans-IO.

Host → chip, both dialects (SYN6288 and XFS5152CE data sheets, "通信协议"):

    0xFD | length (2 bytes, big-endian) | command | parameter(s) | data | checksum (SYN6288 only)

`length` counts every byte after itself: command, parameter, data and, on the SYN6288, the XOR
checksum, which makes the XOR of the whole frame (header included) zero. Commands: 0x01 speak
(parameter: text encoding in bits 0-2, SYN6288 background music in bits 3-7), 0x02 stop,
0x03 pause, 0x04 resume, 0x21 status query, 0x88 sleep, 0xFF wake (XFS5152; the SYN6288 wakes on
any byte, so the same frame serves both).

Chip → host: one byte per event: 0x4A ready after power-on, 0x41 frame received, 0x45 frame
not understood, 0x4E busy (speaking), 0x4F idle.

Inline tags in the text steer the voice: `[v5]` volume, `[n2]` read digits as a number,
`[s5]` speed. `markup()` adds them and `split_markup()` takes them off again.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from firmware_protocols.errors import CodecError
from firmware_protocols.serial._stream import ByteStream

HEADER = 0xFD


class Dialect(enum.StrEnum):
    SYN6288 = "syn6288"
    XFS5152 = "xfs5152"

    @property
    def has_checksum(self) -> bool:
        return self is Dialect.SYN6288

    @property
    def max_text_bytes(self) -> int:
        # SYN6288: "每帧最多 200 字节文本"; XFS5152CE: 4 KB receive buffer, 4000 bytes of text.
        return 200 if self is Dialect.SYN6288 else 4000

    @property
    def max_volume_tag(self) -> int:
        return 16 if self is Dialect.SYN6288 else 10


class TextEncoding(enum.IntEnum):
    GB2312 = 0
    GBK = 1
    BIG5 = 2
    UNICODE = 3

    @property
    def codec(self) -> str:
        # The chips take UNICODE as UTF-16 little-endian (XFS5152CE data sheet, 编码格式).
        return {0: "gb2312", 1: "gbk", 2: "big5", 3: "utf-16-le"}[self.value]


class Command(enum.IntEnum):
    SPEAK = 0x01
    STOP = 0x02
    PAUSE = 0x03
    RESUME = 0x04
    STATUS = 0x21
    SLEEP = 0x88
    WAKE = 0xFF


class Reply(enum.IntEnum):
    READY = 0x4A
    RECEIVED = 0x41
    ERROR = 0x45
    BUSY = 0x4E
    IDLE = 0x4F


@dataclass(frozen=True, slots=True)
class Speak:
    """Speak `text` (may carry inline tags)."""

    text: str
    encoding: TextEncoding = TextEncoding.GBK
    music: int = 0  # SYN6288 background music 0-15; 0 is none. Always 0 on the XFS5152.


@dataclass(frozen=True, slots=True)
class Control:
    """Every command other than speak: it has no parameter."""

    command: Command


Frame = Speak | Control


def encode(frame: Frame, dialect: Dialect) -> bytes:
    """The bytes of `frame`; ValueError for text the chip could not take."""
    if isinstance(frame, Speak):
        if not 0 <= frame.music <= 15 or (frame.music and dialect is not Dialect.SYN6288):
            raise ValueError(f"background music {frame.music} not available on {dialect}")
        try:
            text = frame.text.encode(frame.encoding.codec)
        except UnicodeEncodeError as exc:
            raise ValueError(f"text cannot be sent as {frame.encoding.name}: {exc.reason} at {exc.start}") from exc
        if not text:
            raise ValueError("nothing to speak")
        if len(text) > dialect.max_text_bytes:
            raise ValueError(f"text is {len(text)} bytes; {dialect} takes at most {dialect.max_text_bytes}")
        body = bytes((Command.SPEAK, frame.encoding | frame.music << 3)) + text
    else:
        if frame.command is Command.SPEAK:
            raise ValueError("speak needs text: use Speak")
        body = bytes((frame.command,))
    length = len(body) + dialect.has_checksum
    out = bytes((HEADER, length >> 8, length & 0xFF)) + body
    if dialect.has_checksum:
        out += bytes((_xor(out),))
    return out


def _xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


class FrameDecoder:
    """Host → chip frames from a byte stream split anywhere (what a chip, or our virtual one, reads)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._stream = ByteStream()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.feed(data)

    def __iter__(self) -> FrameDecoder:
        return self

    def __next__(self) -> Frame:
        frame = self.next_frame()
        if frame is None:
            raise StopIteration
        return frame

    def next_frame(self) -> Frame | None:
        """The next whole frame, None until more bytes arrive; CodecError after skipping bad bytes."""
        stream = self._stream
        if not stream:
            return None
        if stream[0] != HEADER:
            raise stream.skip_to(HEADER, f"expected frame header 0xFD, got 0x{stream[0]:02X}")
        if len(stream) < 3:
            return None
        length = stream[1] << 8 | stream[2]
        checksum = int(self.dialect.has_checksum)
        if not 1 + checksum <= length <= 2 + self.dialect.max_text_bytes + checksum:
            raise stream.skip_to(HEADER, f"frame length {length} out of range for {self.dialect}")
        if len(stream) < 3 + length:
            return None
        raw = stream.peek(3 + length)
        try:
            frame = self._parse(raw, stream.offset)
        except CodecError:
            # Drop only the header byte: a stray 0xFD in line noise must not swallow the real
            # frame that may start inside the bytes it claimed.
            stream.take(1)
            raise
        stream.take(len(raw))
        return frame

    def _parse(self, raw: bytes, at: int) -> Frame:
        if self.dialect.has_checksum and _xor(raw) != 0:
            raise CodecError(at, f"checksum mismatch: frame XOR is 0x{_xor(raw):02X}, not 0")
        body = raw[3 : len(raw) - self.dialect.has_checksum]
        try:
            command = Command(body[0])
        except ValueError:
            raise CodecError(at + 3, f"unknown command 0x{body[0]:02X}") from None
        if command is not Command.SPEAK:
            if len(body) != 1:
                raise CodecError(at + 4, f"command {command.name} takes no parameters, got {len(body) - 1} byte(s)")
            return Control(command)
        if len(body) < 3:
            raise CodecError(at + 3, "speak frame without text")
        try:
            encoding = TextEncoding(body[1] & 0x07)
        except ValueError:
            raise CodecError(at + 4, f"unknown text encoding {body[1] & 0x07}") from None
        music = body[1] >> 3
        if music > 15 or (music and not self.dialect.has_checksum):
            raise CodecError(at + 4, f"background music {music} not available on {self.dialect}")
        try:
            text = body[2:].decode(encoding.codec)
        except UnicodeDecodeError as exc:
            raise CodecError(at + 5 + exc.start, f"text is not valid {encoding.name}: {exc.reason}") from None
        return Speak(text, encoding, music)


class ReplyDecoder:
    """Chip → host status bytes."""

    def __init__(self) -> None:
        self._stream = ByteStream()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.feed(data)

    def next_reply(self) -> Reply | None:
        if not self._stream:
            return None
        at = self._stream.offset
        byte = self._stream.take(1)[0]
        try:
            return Reply(byte)
        except ValueError:
            raise CodecError(at, f"unknown chip reply 0x{byte:02X}") from None


_TAG = re.compile(r"\[([a-z])(\d{1,2})\]")


def markup(text: str, *, volume: int | None = None, numbers_as_value: bool = False, speed: int | None = None) -> str:
    """Prefix `text` with inline tags: `[v{volume}]`, `[n2]`, `[s{speed}]`."""
    tags = ""
    if volume is not None:
        tags += f"[v{volume}]"
    if numbers_as_value:
        tags += "[n2]"
    if speed is not None:
        tags += f"[s{speed}]"
    return tags + text


def split_markup(text: str) -> tuple[str, dict[str, int]]:
    """The text to be spoken and the tags it carried (the last value of each tag wins)."""
    tags = {match.group(1): int(match.group(2)) for match in _TAG.finditer(text)}
    return _TAG.sub("", text), tags
