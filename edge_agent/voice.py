"""What the speaker says, and how: a voice pack of Mandarin clips or the TTS chip.

`VoicePack` turns announcement text into clip audio (longest phrase first, then character by
character). A `Speaker` says an announcement: `ClipSpeaker` renders clips into an `AudioSink`,
`ChipSpeaker` hands the text to the TTS chip, which speaks it itself.
"""

from __future__ import annotations

import json
import wave
from importlib import resources
from pathlib import Path
from typing import Protocol

from edge_agent.hardware.audio import AudioSink, Rendered
from edge_agent.hardware.errors import AudioError, Unreachable
from edge_agent.hardware.ports import TtsChip, TtsState


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


# The phrase the self-test renders: it needs the pack's channel phrases, digits and units.
SELF_TEST_TEXT = "收款成功一十二点五元"


class Speaker(Protocol):
    """Says announcements; `say` returns once speech has started, raises HardwareError if it cannot."""

    async def say(self, name: str, text: str, *, volume: int) -> None: ...

    async def chip_state(self) -> TtsState | None:
        """The TTS chip's state for health reports; None when speech does not use a chip."""
        ...

    async def self_test(self) -> None:
        """Return if the speaker can speak now, without making a sound; raise HardwareError if not."""
        ...

    def use_voice(self, voice: str) -> bool:
        """Speak with `voice` from now on; False (and no change) if this speaker has no such voice."""
        ...


class ClipSpeaker:
    """Announcements from voice clips, played by an audio sink."""

    def __init__(self, voice: VoicePack, sink: AudioSink) -> None:
        self.voice = voice
        self.voice_name = "zh_cn"
        self.sink = sink

    async def say(self, name: str, text: str, *, volume: int) -> None:  # noqa: ARG002 - see below
        # Clip playback volume belongs to the board's mixer, not to the samples: scaling PCM on
        # the announce path would cost milliseconds per payment for nothing the codec can't do.
        await self.sink.play(self.voice.render(name, text))

    async def chip_state(self) -> TtsState | None:
        return None

    async def self_test(self) -> None:
        self.voice.render("self-test", SELF_TEST_TEXT)
        await self.sink.check()

    def use_voice(self, voice: str) -> bool:
        if voice == self.voice_name:
            return True
        try:
            pack = VoicePack.builtin(voice)
        except (AudioError, OSError, ValueError):
            return False
        self.voice, self.voice_name = pack, voice
        return True


class ChipSpeaker:
    """Announcements spoken by the TTS chip from their text."""

    def __init__(self, chip: TtsChip) -> None:
        self.chip = chip

    async def say(self, name: str, text: str, *, volume: int) -> None:  # noqa: ARG002 - the chip needs no name
        await self.chip.speak(text, volume=volume)

    async def chip_state(self) -> TtsState | None:
        return await self.chip.state()

    async def self_test(self) -> None:
        if await self.chip.state() == "unreachable":
            raise Unreachable("the TTS chip does not answer")

    def use_voice(self, voice: str) -> bool:
        # The chip has its own Mandarin voice; choosing among the chip's speakers is a later
        # addition (the [m3]/[m51] tags), so only the standard voice is accepted.
        return voice == "zh_cn"
