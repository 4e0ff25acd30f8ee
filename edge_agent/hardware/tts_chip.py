"""The TTS chip port: a SYN6288 / XFS5152 on a UART, and a fake for unit tests.

A speak frame sent while the chip is still speaking cuts the previous announcement off, so
`speak` first waits (status queries) until the chip is idle, then sends the text and returns
when the chip confirms it received the frame, which is when it starts speaking.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from edge_agent.hardware.errors import HardwareError, Unreachable
from edge_agent.hardware.ports import TtsState
from edge_agent.hardware.serial_line import SerialLine
from firmware_protocols.errors import CodecError
from firmware_protocols.serial import tts

log = structlog.get_logger(__name__)

# The chip answers a frame within a few milliseconds at 9600 baud; 0.5 s means it is not there.
ANSWER_TIMEOUT_S = 0.5
# The longest announcement (a refund with a large amount, repeated) lasts about 12 s.
MAX_BUSY_S = 15.0
BUSY_POLL_S = 0.1


class SerialTtsChip:
    def __init__(
        self,
        line: SerialLine,
        dialect: tts.Dialect,
        *,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        max_busy_s: float = MAX_BUSY_S,
    ) -> None:
        self.line = line
        self.dialect = dialect
        self.answer_timeout_s = answer_timeout_s
        self.max_busy_s = max_busy_s
        self._replies = tts.ReplyDecoder()
        self._log = log.bind(part=line.name, port=line.url)

    async def speak(self, text: str, *, volume: int) -> None:
        volume_tag = round(volume * self.dialect.max_volume_tag / 10)
        try:
            frame = tts.encode(tts.Speak(tts.markup(text, volume=volume_tag)), self.dialect)
        except ValueError as exc:
            raise HardwareError(f"the TTS chip cannot say {text!r}: {exc}") from exc
        async with self.line.session():
            await self._wait_idle()
            await self._send(frame, tts.Reply.RECEIVED)

    async def state(self) -> TtsState:
        try:
            async with self.line.session():
                return await self._query()
        except Unreachable:
            return "unreachable"

    async def stop(self) -> None:
        async with self.line.session():
            await self._send(tts.encode(tts.Control(tts.Command.STOP), self.dialect), tts.Reply.RECEIVED)

    async def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.max_busy_s
        while await self._query() == "busy":
            if time.monotonic() >= deadline:
                raise HardwareError(f"TTS chip on {self.line.url} stayed busy for {self.max_busy_s:.0f} s")
            await asyncio.sleep(BUSY_POLL_S)

    async def _query(self) -> TtsState:
        await self._send(tts.encode(tts.Control(tts.Command.STATUS), self.dialect), tts.Reply.RECEIVED)
        reply = await self._next_reply({tts.Reply.BUSY, tts.Reply.IDLE})
        return "busy" if reply is tts.Reply.BUSY else "idle"

    async def _send(self, frame: bytes, expect: tts.Reply) -> None:
        await self.line.discard_input()
        self._replies = tts.ReplyDecoder()
        await self.line.write(frame)
        await self._next_reply({expect})

    async def _next_reply(self, wanted: set[tts.Reply]) -> tts.Reply:
        deadline = time.monotonic() + self.answer_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            while True:
                try:
                    reply = self._replies.next_reply()
                except CodecError as exc:
                    self._log.warning("garbage from TTS chip ignored", error=str(exc))
                    continue
                if reply is None:
                    break
                if reply in wanted:
                    return reply
                if reply is tts.Reply.ERROR:
                    raise HardwareError(f"TTS chip on {self.line.url} did not understand the frame")
                # READY after a reset, or a stale status byte: not an answer to this frame.
            self._replies.feed(await self.line.read(min(left, 0.1)))
        wanted_names = "/".join(sorted(r.name for r in wanted))
        raise Unreachable(f"TTS chip on {self.line.url} did not answer ({wanted_names}) in {self.answer_timeout_s} s")


class FakeTtsChip:
    """An in-memory chip for unit tests: remembers what it said; can be made to fail."""

    def __init__(self) -> None:
        self.spoken: list[tuple[str, int]] = []
        self.failure: HardwareError | None = None

    async def speak(self, text: str, *, volume: int) -> None:
        if self.failure is not None:
            raise self.failure
        self.spoken.append((text, volume))

    async def state(self) -> TtsState:
        return "unreachable" if isinstance(self.failure, Unreachable) else "idle"

    async def stop(self) -> None:
        return None
