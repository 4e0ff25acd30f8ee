"""A fleet of simulated devices, each running the real edge agent over simulated hardware.

Every device gets its own MQTT session, state folder (dedup window) and speaker, so
`<base>/audio/<device_id>/<payment_id>.wav` is what that device "said". The first
`serial_devices` of them are POS terminals with serial hardware: a virtual TTS chip, 4G modem
and receipt printer on pseudo-terminals under `<base>/peers/<device_id>/`, driven by the agent's
real serial code; their chip renders what it is told to say into the same audio folder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from edge_agent.agent import AgentStats, EdgeAgent
from edge_agent.bootstrap import open_hardware
from edge_agent.config import AgentConfig
from edge_agent.hardware.audio import WavFileSink
from edge_agent.hardware.modem import SimulatedModem
from edge_agent.voice import VoicePack
from simulators.serial_peers import Utterance, VirtualModem, VirtualPrinter, VirtualTtsChip


class SimulatedFleet:
    def __init__(
        self,
        count: int,
        *,
        broker_url: str,
        server_keys: list[str],
        base_dir: Path,
        prefix: str = "SIM",
        health_interval_s: float = 60.0,
        serial_devices: int = 0,
    ) -> None:
        if count < 1:
            raise ValueError("a fleet needs at least one device")
        if not 0 <= serial_devices <= count:
            raise ValueError(f"serial_devices must be 0-{count}, not {serial_devices}")
        self.voice = VoicePack.builtin()
        self.base_dir = base_dir
        self.configs: list[AgentConfig] = []
        self.peers: dict[str, tuple[VirtualTtsChip, VirtualModem, VirtualPrinter]] = {}
        for i in range(1, count + 1):
            device_id = f"{prefix}{i:05d}"
            ports: dict[str, str] = {}
            if i <= serial_devices:
                folder = base_dir / "peers" / device_id
                sink = WavFileSink(base_dir / "audio" / device_id)
                chip = VirtualTtsChip(folder / "tts", on_speak=self._renderer(sink), seed=i)
                self.peers[device_id] = (
                    chip,
                    VirtualModem(folder / "modem", seed=i),
                    VirtualPrinter(folder / "printer"),
                )
                ports = {"tts_port": str(folder / "tts"), "modem_port": str(folder / "modem")}
                ports["printer_port"] = str(folder / "printer")
            self.configs.append(
                AgentConfig(
                    device_id=device_id,
                    broker_url=broker_url,
                    server_keys=server_keys,
                    state_dir=base_dir / "state" / device_id,
                    serial=f"HD{prefix}{i:08d}",
                    model="HD-P1" if ports else "HD-S1",
                    health_interval_s=health_interval_s,
                    **ports,
                )
            )
        self.agents: list[EdgeAgent] = []
        self.modems: dict[str, SimulatedModem] = {}
        self._own_stacks: dict[str, contextlib.AsyncExitStack] = {}
        self._stack = contextlib.AsyncExitStack()

    def _renderer(self, sink: WavFileSink) -> Callable[[Utterance], Coroutine[Any, Any, None]]:
        count = 0

        async def render(utterance: Utterance) -> None:
            nonlocal count
            count += 1
            await sink.play(self.voice.render(f"tts-{count:06d}", utterance.text))

        return render

    @property
    def device_ids(self) -> list[str]:
        return [config.device_id for config in self.configs]

    async def __aenter__(self) -> Self:
        try:
            for peers in self.peers.values():
                for peer in peers:
                    await self._stack.enter_async_context(peer)
            for i, config in enumerate(self.configs, start=1):
                hardware = await self._stack.enter_async_context(
                    open_hardware(
                        config, audio_dir=self.base_dir / "audio" / config.device_id, voice=self.voice, modem_seed=i
                    )
                )
                if isinstance(hardware.modem, SimulatedModem):
                    self.modems[config.device_id] = hardware.modem
                # Each agent in its own stack, so that one can be switched off (stolen, unplugged).
                own = await self._stack.enter_async_context(contextlib.AsyncExitStack())
                self._own_stacks[config.device_id] = own
                self.agents.append(await own.enter_async_context(EdgeAgent(config, **hardware.ports())))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.gather(*(agent.wait_connected(timeout_s) for agent in self.agents))

    async def power_off(self, device_id: str) -> None:
        """Switch one device off for good (stolen, thrown away): its agent stops cleanly."""
        await self._own_stacks[device_id].aclose()

    def move(self, device_id: str, area: str, cell_id: str, gps: tuple[float, float] | None = None) -> None:
        """Carry a device elsewhere: its simulated modem now reports another serving cell."""
        self.modems[device_id].move_to(area, cell_id, gps)

    def online(self) -> int:
        return sum(agent.connected for agent in self.agents)

    def stats(self) -> AgentStats:
        total = AgentStats()
        for agent in self.agents:
            for name, value in asdict(agent.stats).items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def serial_report(self) -> dict[str, dict[str, int]]:
        """What each device's virtual serial hardware saw: utterances, receipts, bytes, codec errors."""
        return {
            device_id: {
                "tts_utterances": len(chip.spoken),
                "receipts_printed": len(printer.receipts),
                "modem_commands": len(modem.commands),
                "codec_errors": chip.codec_errors + printer.codec_errors,
            }
            for device_id, (chip, modem, printer) in self.peers.items()
        }
