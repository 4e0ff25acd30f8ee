"""Sound out of the speaker: a voice pack of Mandarin clips and the sinks that play them.

`VoicePack` turns announcement text into clip audio (longest phrase first, then character by
character). An `AudioSink` plays a rendered announcement: `WavFileSink` writes one WAV per
announcement (the simulated speaker of the demo and tests), `MemorySink` keeps them for unit
tests. A board's I2S/PCM sink and the TTS-chip sink implement the same port.
"""

from __future__ import annotations

import asyncio
import json
import wave
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol


class AudioError(Exception):
    """The voice pack or an audio sink cannot do what was asked."""


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


class VoicePack:
    """Clips keyed by the text they speak, all mono 16-bit at one sample rate."""

    def __init__(self, clips: dict[str, bytes], sample_rate: int) -> None:
        if not clips:
            raise AudioError("voice pack has no clips")
        self._clips = clips
        self.sample_rate = sample_rate
        self._longest = max(len(token) for token in clips)

    @classmethod
    def load(cls, folder: Path) -> VoicePack:
        """Load a pack folder: `manifest.json` naming one WAV per token."""
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            clips: dict[str, bytes] = {}
            rate = int(manifest["sample_rate"])
            for token, file_name in manifest["clips"].items():
                with wave.open(str(folder / file_name), "rb") as clip:
                    if (clip.getnchannels(), clip.getsampwidth(), clip.getframerate()) != (1, 2, rate):
                        raise AudioError(f"voice clip {file_name}: must be mono 16-bit {rate} Hz")
                    clips[token] = clip.readframes(clip.getnframes())
        except (OSError, KeyError, ValueError, wave.Error) as exc:
            raise AudioError(f"cannot load voice pack from {folder}: {exc}") from exc
        return cls(clips, rate)

    @classmethod
    def builtin(cls, language: str = "zh_cn") -> VoicePack:
        """The pack shipped with the agent (made by scripts/make_voice_pack.py)."""
        folder = resources.files("edge_agent") / "voices" / language
        with resources.as_file(folder) as path:
            return cls.load(Path(path))

    def tokens(self, text: str) -> list[str]:
        """Split `text` into clip tokens, longest match first; raise if a part has no clip."""
        out: list[str] = []
        i = 0
        while i < len(text):
            for size in range(min(self._longest, len(text) - i), 0, -1):
                if text[i : i + size] in self._clips:
                    out.append(text[i : i + size])
                    i += size
                    break
            else:
                raise AudioError(f"voice pack has no clip for {text[i]!r} in {text!r}")
        return out

    def render(self, name: str, text: str) -> Rendered:
        pcm = b"".join(self._clips[token] for token in self.tokens(text))
        return Rendered(name=name, text=text, pcm=pcm, sample_rate=self.sample_rate)


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
