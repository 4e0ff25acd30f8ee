"""Decode throughput of each serial codec: frames per second on one core.

Each codec decodes a realistic stream (what the device actually reads from its UART), fed in
64-byte reads as a serial port delivers it; the best of `repeats` runs is reported, with the
median, as frames/s and MB/s. For scale: a UART at 115200 baud carries about 11.5 KB/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.receipt import receipt_for
from firmware_protocols.messages import Announce
from firmware_protocols.serial import at, escpos, tts

READ_SIZE = 64

# A decoder as the benchmark drives it: feed bytes, then take items until None.
Decoder = tuple[Callable[[bytes], None], Callable[[], Any]]


@dataclass(frozen=True, slots=True)
class CodecFigure:
    codec: str
    frames: int
    stream_bytes: int
    best_frames_per_s: float
    median_frames_per_s: float
    best_mb_per_s: float

    def line(self) -> str:
        return (
            f"{self.codec:28} {self.best_frames_per_s:>12,.0f} frames/s (median {self.median_frames_per_s:>10,.0f})"
            f"  {self.best_mb_per_s:6.2f} MB/s  [{self.frames} frames, {self.stream_bytes} bytes]"
        )


@dataclass(frozen=True, slots=True)
class CodecFigures:
    codecs: list[CodecFigure]

    def lines(self) -> list[str]:
        return [
            "ceiling: the wire; a UART at 115200 baud carries about 11.5 KB/s, 9600 baud about 0.96 KB/s",
            *(figure.line() for figure in self.codecs),
        ]


def _run(data: bytes, make: Callable[[], Decoder], expect: int) -> float:
    feed, next_item = make()
    started = time.perf_counter()
    got = 0
    for start in range(0, len(data), READ_SIZE):
        feed(data[start : start + READ_SIZE])
        while next_item() is not None:
            got += 1
    elapsed = time.perf_counter() - started
    if got != expect:
        raise RuntimeError(f"decoded {got} frames, expected {expect}")
    return elapsed


def _streams(
    count: int,
) -> dict[str, tuple[bytes, int, Callable[[], Decoder]]]:
    streams: dict[str, tuple[bytes, int, Callable[[], Decoder]]] = {}
    texts = ["[v7]微信收款十二点五元", "[v7]支付宝到账一千零五十九点三元", "[v7]云闪付收款五元"]
    for dialect in tts.Dialect:
        frames = [
            tts.encode(tts.Speak(texts[i % 3]) if i % 2 else tts.Control(tts.Command.STATUS), dialect)
            for i in range(count)
        ]

        def tts_decoder(d: tts.Dialect = dialect) -> Decoder:
            decoder = tts.FrameDecoder(d)
            return decoder.feed, decoder.next_frame

        streams[f"tts {dialect} frames"] = (b"".join(frames), count, tts_decoder)

    def replies() -> Decoder:
        decoder = tts.ReplyDecoder()
        return decoder.feed, decoder.next_reply

    streams["tts chip replies"] = (bytes([0x41, 0x4E, 0x41, 0x4F] * (count // 4)), count // 4 * 4, replies)

    # The modem: a +CSQ exchange with a URC inside, as the agent's health loop reads it. The
    # parser is told of each command (expect) exactly when its answer starts, as in the adapter.
    exchange = b'AT+CSQ\r\r\n+CSQ: 20,99\r\n\r\n+CEREG: 1,"D509","80D413D",7\r\n\r\nOK\r\n'

    def modem() -> Decoder:
        parser = at.AtParser()

        def next_event() -> Any:
            event = parser.next_event()
            if isinstance(event, at.AtResponse):
                parser.expect(b"AT+CSQ\r")
            return event

        parser.expect(b"AT+CSQ\r")
        return parser.feed, next_event

    streams["at modem events"] = (exchange * (count // 2), count // 2 * 2, modem)

    # The receipt the agent prints for a payment.
    announce = Announce(
        device_id="POS1",
        ts=1_763_712_000_000,
        payment_id="PAY-20261122-000001",
        amount_fen=1250,
        channel="wechat",
        paid_at=1_763_712_000_000,
        issued_at=1_763_712_000_000,
        ttl_s=60,
        key_id="bench",
    )
    receipt = receipt_for(announce, "微信收款十二点五元")
    per_receipt = len(receipt.commands)
    receipts = max(1, count // per_receipt)

    def printer() -> Decoder:
        decoder = escpos.CommandDecoder()
        return decoder.feed, decoder.next_command

    streams["escpos commands"] = (receipt.encode() * receipts, receipts * per_receipt, printer)
    return streams


def measure(frames: int = 20_000, repeats: int = 5) -> list[CodecFigure]:
    figures = []
    for name, (data, expect, make) in _streams(frames).items():
        times = [_run(data, make, expect) for _ in range(repeats)]
        best, median = min(times), statistics.median(times)
        figures.append(
            CodecFigure(
                codec=name,
                frames=expect,
                stream_bytes=len(data),
                best_frames_per_s=expect / best,
                median_frames_per_s=expect / median,
                best_mb_per_s=len(data) / best / 1e6,
            )
        )
    return figures
