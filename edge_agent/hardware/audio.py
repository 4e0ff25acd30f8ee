"""Sound out of the speaker: the `AudioSink` port and its adapters.

`AplaySink` plays through ALSA with `aplay` (a board's codec), `WavFileSink` writes one WAV per
announcement (the simulated speaker of the demo and tests), `MemorySink` keeps them for unit
tests. Announcements spoken by a TTS chip do not pass through here: see `edge_agent.voice`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.hardware.errors import AudioError

PLAYED_LOG = "played.log"


@dataclass(frozen=True, slots=True)
class Rendered:
    """An announcement ready to play: its text and PCM audio (mono, 16-bit)."""

    name: str
    text: str
    pcm: bytes
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


class AudioSink(Protocol):
    """Where rendered announcements are played."""

    async def play(self, rendered: Rendered) -> None:
        """Start playing `rendered`; return once playback has started."""
        ...

    async def check(self) -> None:
        """Return if the sink can play now; raise `AudioError` saying why not (the self-test)."""
        ...


class WavFileSink:
    """A simulated speaker: each announcement becomes `<folder>/<name>.wav`, and a line in
    `<folder>/played.log`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # A simulated amplifier fault: set it and every play and self-test fails with it.
        self.fault: str | None = None

    def _write(self, rendered: Rendered) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Names come from payment ids, which may hold any printable character: keep them to a file name.
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in rendered.name).lstrip(".") or "_"
        path = self.folder / f"{safe}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rendered.sample_rate)
            out.writeframes(rendered.pcm)
        # What the speaker said, in order, one line per play: a replay would overwrite its WAV
        # file but not hide here, so tests and the demo count plays from this log.
        with (self.folder / PLAYED_LOG).open("a", encoding="utf-8") as played:
            played.write(f"{time.time():.3f} {rendered.name} {rendered.text}\n")

    async def play(self, rendered: Rendered) -> None:
        if self.fault:
            raise AudioError(f"speaker fault: {self.fault}")
        try:
            await asyncio.to_thread(self._write, rendered)
        except OSError as exc:
            raise AudioError(f"cannot write {rendered.name}.wav in {self.folder}: {exc}") from exc

    async def check(self) -> None:
        if self.fault:
            raise AudioError(f"speaker fault: {self.fault}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AudioError(f"cannot write announcements in {self.folder}: {exc}") from exc
        if not os.access(self.folder, os.W_OK):
            raise AudioError(f"cannot write announcements in {self.folder}: not writable")


class MemorySink:
    """A fake speaker for unit tests: remembers what it played, in order."""

    def __init__(self) -> None:
        self.played: list[Rendered] = []
        self.fault: str | None = None

    async def play(self, rendered: Rendered) -> None:
        if self.fault:
            raise AudioError(f"speaker fault: {self.fault}")
        self.played.append(rendered)

    async def check(self) -> None:
        if self.fault:
            raise AudioError(f"speaker fault: {self.fault}")


class AplaySink:
    """A real speaker through ALSA: pipes the PCM into `aplay` and returns once it is playing."""

    def __init__(self, device: str = "default", aplay: str = "aplay") -> None:
        path = shutil.which(aplay)
        if path is None:
            raise AudioError(f"{aplay} not found: install alsa-utils or choose another audio output")
        self._aplay = path
        self.device = device
        self._playing: asyncio.subprocess.Process | None = None

    async def play(self, rendered: Rendered) -> None:
        # One announcement at a time: wait for the previous one to finish before starting.
        if self._playing is not None:
            await self._playing.wait()
        try:
            process = await asyncio.create_subprocess_exec(
                self._aplay,
                "-q",
                "-D",
                self.device,
                "-t",
                "raw",
                "-f",
                "S16_LE",
                "-c",
                "1",
                "-r",
                str(rendered.sample_rate),
                stdin=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise AudioError(f"cannot start {self._aplay}: {exc}") from exc
        assert process.stdin is not None  # noqa: S101 - set by stdin=PIPE
        process.stdin.write(rendered.pcm)
        try:
            await process.stdin.drain()
            process.stdin.close()
        except (BrokenPipeError, ConnectionResetError) as exc:
            _, err = await process.communicate()
            raise AudioError(f"aplay on {self.device} failed: {err.decode(errors='replace').strip() or exc}") from exc
        self._playing = process

    async def check(self) -> None:
        # `aplay -l` lists the sound cards; none (or a broken driver) means nothing can play.
        process = await asyncio.create_subprocess_exec(
            self._aplay, "-l", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout=5)
        except TimeoutError:
            process.kill()
            raise AudioError("aplay -l did not answer within 5 s") from None
        if process.returncode != 0 or b"card " not in out:
            raise AudioError(f"no sound card: {err.decode(errors='replace').strip() or 'aplay -l lists none'}")
