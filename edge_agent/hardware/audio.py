"""Sound out of the speaker: the `AudioSink` port and its adapters.

`AplaySink` plays through ALSA with `aplay` (a board's codec), `WavFileSink` writes one WAV per
announcement (the simulated speaker of the demo and tests), `MemorySink` keeps them for unit
tests. Announcements spoken by a TTS chip do not pass through here: see `edge_agent.voice`.
"""

from __future__ import annotations

import asyncio
import shutil
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.hardware.errors import AudioError


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


class WavFileSink:
    """A simulated speaker: each announcement becomes `<folder>/<name>.wav`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _write(self, rendered: Rendered) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{rendered.name}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rendered.sample_rate)
            out.writeframes(rendered.pcm)

    async def play(self, rendered: Rendered) -> None:
        try:
            await asyncio.to_thread(self._write, rendered)
        except OSError as exc:
            raise AudioError(f"cannot write {rendered.name}.wav in {self.folder}: {exc}") from exc


class MemorySink:
    """A fake speaker for unit tests: remembers what it played, in order."""

    def __init__(self) -> None:
        self.played: list[Rendered] = []

    async def play(self, rendered: Rendered) -> None:
        self.played.append(rendered)


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
