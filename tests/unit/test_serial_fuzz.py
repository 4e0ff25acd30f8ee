"""Hypothesis on every serial codec: round trips, streams split anywhere, arbitrary bytes.

Decoders must turn any bytes into frames or `CodecError` (nothing else), always make progress,
and decode a valid stream to the same frames however it is cut into reads.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from firmware_protocols.errors import CodecError
from firmware_protocols.serial import at, escpos, tts
from tests.unit.decoding import drain

CHINESE = "微信收款支付宝到账云闪付元零一二三四五六七八九十百千万点好店退款成功"
ASCII = "abcXYZ0123456789 .:-[]"


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# -- TTS -------------------------------------------------------------------------------------------

dialects = st.sampled_from(list(tts.Dialect))
controls = st.sampled_from([c for c in tts.Command if c is not tts.Command.SPEAK]).map(tts.Control)


@st.composite
def tts_frames(draw: st.DrawFn, dialect: tts.Dialect) -> tts.Frame:
    if draw(st.booleans()):
        return draw(controls)
    encoding = draw(st.sampled_from(list(tts.TextEncoding)))
    alphabet = ASCII if encoding is tts.TextEncoding.BIG5 else CHINESE + ASCII
    text = draw(st.text(alphabet=alphabet, min_size=1, max_size=60))
    music = draw(st.integers(0, 15)) if dialect is tts.Dialect.SYN6288 else 0
    return tts.Speak(text, encoding, music)


@st.composite
def tts_streams(draw: st.DrawFn) -> tuple[tts.Dialect, list[tts.Frame]]:
    dialect = draw(dialects)
    return dialect, draw(st.lists(tts_frames(dialect), min_size=1, max_size=8))


@given(tts_streams(), st.lists(st.integers(0, 10_000), max_size=12))
def test_tts_stream_split_anywhere_decodes_to_the_same_frames(
    stream: tuple[tts.Dialect, list[tts.Frame]], cuts: list[int]
) -> None:
    dialect, frames = stream
    data = b"".join(tts.encode(frame, dialect) for frame in frames)
    decoder = tts.FrameDecoder(dialect)
    decoded: list[Any] = []
    for chunk in chunks(data, cuts):
        decoder.feed(chunk)
        decoded += drain(decoder.next_frame, 100)
    assert decoded == frames


@given(dialects, st.binary(max_size=600), st.lists(st.integers(0, 1000), max_size=6))
def test_tts_arbitrary_bytes_raise_only_codec_errors(dialect: tts.Dialect, data: bytes, cuts: list[int]) -> None:
    decoder = tts.FrameDecoder(dialect)
    for chunk in chunks(data, cuts):
        decoder.feed(chunk)
        drain(decoder.next_frame, len(data) + 2)


@given(st.binary(max_size=200))
def test_tts_replies_from_arbitrary_bytes(data: bytes) -> None:
    decoder = tts.ReplyDecoder()
    decoder.feed(data)
    assert len(drain(decoder.next_reply, len(data) + 1)) == len(data)


@given(st.text(max_size=40), st.integers(0, 10))
def test_tts_markup_round_trip(text: str, volume: int) -> None:
    plain = text.replace("[", "(")
    assert tts.split_markup(tts.markup(plain, volume=volume, numbers_as_value=True)) == (plain, {"v": volume, "n": 2})


# -- AT --------------------------------------------------------------------------------------------

COMMANDS: list[tuple[bytes, list[str]]] = [
    (at.build("+CSQ"), ["+CSQ: 28,99", "+CSQ: 99,99", "+CSQ: 7,0"]),
    (at.build("+CREG", query=True), ["+CREG: 0,1", '+CREG: 2,5,"1A2D","0B3C5D01",7']),
    (at.build("+QCCID"), ["+QCCID: 89860025128306012474"]),
    (at.build("I"), ["Quectel", "EC25", "Revision: EC25EFAR02A08M4G"]),
    (at.build("+QENG", "servingcell"), ['+QENG: "servingcell","SEARCH"']),
]
URCS = ["RDY", "+CPIN: READY", "+QIND: SMS DONE", "+CEREG: 2", "RING", '+QIURC: "pdpdeact",1']
FINALS = ["OK", "ERROR", "+CME ERROR: 10", "+CMS ERROR: 500"]


def _line(text: str) -> bytes:
    return b"\r\n" + text.encode("ascii") + b"\r\n"


@st.composite
def at_exchanges(draw: st.DrawFn) -> tuple[list[bytes], list[tuple[bytes | None, bytes]], list[Any]]:
    """Segments of modem output; before each, the command the host sends (None: nothing sent)."""
    segments: list[tuple[bytes | None, bytes]] = []
    expected: list[Any] = []
    for _ in range(draw(st.integers(1, 5))):
        before = draw(st.lists(st.sampled_from(URCS), max_size=2))
        segments.append((None, b"".join(_line(u) for u in before)))
        expected += [at.Urc(u) for u in before]
        command, options = draw(st.sampled_from(COMMANDS))
        text = command.decode().strip()
        out = command if draw(st.booleans()) else b""  # echo on or off
        lines: list[str] = []
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                urc = draw(st.sampled_from(URCS))
                out += _line(urc)
                expected.append(at.Urc(urc))
            else:
                line = draw(st.sampled_from(options))
                lines.append(line)
                out += _line(line)
        final = draw(st.sampled_from(FINALS))
        out += _line(final)
        kind, _, error = final.partition(": ")
        expected.append(at.AtResponse(text, tuple(lines), at.Final(kind), error or None))
        segments.append((command, out))
    return [], segments, expected


@given(at_exchanges(), st.lists(st.integers(0, 10_000), max_size=10))
def test_at_exchanges_split_anywhere_parse_the_same(
    exchange: tuple[list[bytes], list[tuple[bytes | None, bytes]], list[Any]], cuts: list[int]
) -> None:
    _, segments, expected = exchange
    parser = at.AtParser()
    events: list[Any] = []
    for command, data in segments:
        if command is not None:
            parser.expect(command)
        for chunk in chunks(data, cuts):
            parser.feed(chunk)
            events += drain(parser.next_event, 100)
    stripped = [e.__class__(**{**_fields(e), "offset": 0}) for e in events]
    assert stripped == expected


def _fields(event: at.AtResponse | at.Urc) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__slots__}


@given(st.binary(max_size=800), st.booleans(), st.lists(st.integers(0, 1000), max_size=6))
def test_at_arbitrary_bytes_raise_only_codec_errors(data: bytes, pending: bool, cuts: list[int]) -> None:
    parser = at.AtParser()
    if pending:
        parser.expect(at.build("+CSQ"))
    for chunk in chunks(data, cuts):
        parser.feed(chunk)
        drain(parser.next_event, len(data) + 2)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120))
def test_at_value_parsers_raise_only_codec_errors(line: str) -> None:
    for command in (b"AT+CSQ\r", b"AT+CREG?\r", b"AT+QCCID\r", b'AT+QENG="servingcell"\r', b"ATI\r", b"AT+CGSN\r"):
        response = at.AtResponse(command.decode().strip(), (line,), at.Final.OK)
        for parse in (at.parse_csq, at.parse_iccid, at.parse_servingcell, at.parse_ati, at.parse_imei):
            with contextlib.suppress(CodecError):
                parse(response)
        with contextlib.suppress(CodecError):
            at.parse_registration(response)
        with contextlib.suppress(CodecError):
            at.parse_registration(at.Urc(line))


# -- ESC/POS ---------------------------------------------------------------------------------------

simple_commands = st.one_of(
    st.just(escpos.LineFeed()),
    st.sampled_from(list(escpos.Align)).map(escpos.SetAlign),
    st.booleans().map(escpos.Bold),
    st.builds(escpos.Size, st.integers(1, 8), st.integers(1, 8)),
    st.integers(0, 255).map(escpos.FeedLines),
    st.builds(escpos.Cut, st.booleans(), st.none() | st.integers(0, 255)),
    st.integers(1, 4).map(escpos.StatusRequest),
)


@st.composite
def receipts(draw: st.DrawFn) -> list[escpos.Command]:
    commands: list[escpos.Command] = []
    chinese = False
    for _ in range(draw(st.integers(1, 12))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            commands.append(escpos.Init())
            chinese = False
        elif choice == 1:
            chinese = draw(st.booleans())
            commands.append(escpos.ChineseMode(chinese))
        elif choice == 2:
            alphabet = CHINESE + ASCII if chinese else ASCII
            commands += [escpos.Text(draw(st.text(alphabet=alphabet, min_size=1, max_size=40))), escpos.LineFeed()]
        else:
            commands.append(draw(simple_commands))
    return commands


@given(receipts(), st.lists(st.integers(0, 10_000), max_size=10))
def test_escpos_receipts_split_anywhere_decode_to_the_same_commands(
    commands: list[escpos.Command], cuts: list[int]
) -> None:
    data = escpos.encode(commands)
    decoder = escpos.CommandDecoder()
    decoded: list[Any] = []
    for chunk in chunks(data, cuts):
        decoder.feed(chunk)
        decoded += drain(decoder.next_command, 1000)
    assert decoded == commands


@given(st.binary(max_size=600), st.lists(st.integers(0, 1000), max_size=6))
def test_escpos_arbitrary_bytes_raise_only_codec_errors(data: bytes, cuts: list[int]) -> None:
    decoder = escpos.CommandDecoder()
    for chunk in chunks(data, cuts):
        decoder.feed(chunk)
        drain(decoder.next_command, len(data) + 2)


@given(st.integers(0, 6), st.integers(0, 255))
def test_escpos_status_of_any_byte_is_a_status_or_codec_error(kind: int, value: int) -> None:
    try:
        status = escpos.parse_status(kind, value)
    except CodecError:
        return
    assert escpos.status_byte(kind, status) & 0x93 == 0x12
