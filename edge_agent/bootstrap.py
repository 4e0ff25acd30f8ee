"""Wire an agent's hardware from its configuration: the real adapters or the simulated ones.

async with open_hardware(config, audio_dir=...) as hardware:
    async with EdgeAgent(config, **hardware.ports()) as agent:
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.hardware.audio import AplaySink, AudioSink, WavFileSink
from edge_agent.hardware.modem import SerialModem, SimulatedModem
from edge_agent.hardware.ports import Modem, Printer, SystemInfo
from edge_agent.hardware.printer import SerialPrinter
from edge_agent.hardware.serial_line import SerialLine
from edge_agent.hardware.system import LinuxSystemInfo
from edge_agent.hardware.tts_chip import SerialTtsChip
from edge_agent.voice import ChipSpeaker, ClipSpeaker, Speaker, VoicePack
from firmware_protocols.serial.tts import Dialect


@dataclass(frozen=True, slots=True)
class Hardware:
    speaker: Speaker
    modem: Modem
    printer: Printer | None
    system: SystemInfo

    def ports(self) -> dict[str, Any]:
        return {"speaker": self.speaker, "modem": self.modem, "printer": self.printer, "system": self.system}


@contextlib.asynccontextmanager
async def open_hardware(
    config: AgentConfig, *, audio_dir: Path, voice: VoicePack | None = None, modem_seed: int | None = None
) -> AsyncIterator[Hardware]:
    """The device's parts per `config`; serial lines are closed on exit."""
    async with contextlib.AsyncExitStack() as stack:

        async def line(url: str, baudrate: int, name: str) -> SerialLine:
            return await stack.enter_async_context(SerialLine(url, baudrate=baudrate, name=name))

        speaker: Speaker
        if config.tts_port:
            chip = SerialTtsChip(await line(config.tts_port, config.tts_baud, "tts"), Dialect(config.tts_dialect))
            speaker = ChipSpeaker(chip)
        else:
            sink: AudioSink = AplaySink(config.audio_device) if config.audio_device else WavFileSink(audio_dir)
            speaker = ClipSpeaker(voice or VoicePack.builtin(), sink)
        modem: Modem = (
            SerialModem(await line(config.modem_port, config.modem_baud, "modem"))
            if config.modem_port
            else SimulatedModem(seed=modem_seed)
        )
        printer = (
            SerialPrinter(await line(config.printer_port, config.printer_baud, "printer"))
            if config.printer_port
            else None
        )
        yield Hardware(speaker, modem, printer, LinuxSystemInfo(disk=config.state_dir))
