"""A fleet of simulated devices, each running the real edge agent over simulated hardware.

Every device gets its own MQTT session, state folder (dedup window) and speaker, so
`<base>/audio/<device_id>/<payment_id>.wav` is what that device "said". The first
`serial_devices` of them are POS terminals with serial hardware: a virtual TTS chip, 4G modem
and receipt printer on pseudo-terminals under `<base>/peers/<device_id>/`, driven by the agent's
real serial code; their chip renders what it is told to say into the same audio folder.

Each device is a board (`_Board`): when its agent asks for a restart (a remote reboot, an OTA
slot switch or rollback) the board starts a fresh agent on the same state folder, as a real
board reboots; `power_cut` stops an agent dead and powers it up again a moment later.
Fault hooks (`BootHooks`) let a simulation give a device a faulty speaker on one firmware
version, or a download link that cuts out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import structlog

from edge_agent.agent import EdgeAgent
from edge_agent.bootstrap import Hardware, open_hardware
from edge_agent.config import AgentConfig
from edge_agent.hardware.audio import WavFileSink
from edge_agent.hardware.modem import SimulatedModem
from edge_agent.ota.slots import BootControl
from edge_agent.stats import AgentStats
from edge_agent.voice import Speaker, VoicePack
from firmware_protocols.credentials import encode_secret
from mqtt_link.tasks import cancel_and_wait
from simulators.clocks import BoardClock, true_ms
from simulators.serial_peers import Utterance, VirtualModem, VirtualPrinter, VirtualTtsChip

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class BootHooks:
    """What a simulation changes on a device at each boot."""

    # (device id, version about to run, the speaker) -> the speaker the agent gets
    speaker: Callable[[str, str, Speaker], Speaker] | None = None
    # device id -> how its update downloads reach the server (None: directly)
    transport: Callable[[str], httpx.AsyncBaseTransport | None] | None = None
    # called with every agent started (to hook its updater's steps)
    started: Callable[[EdgeAgent], None] | None = None


class _Board:
    """One device's power and bootloader: runs its agent, and a new one on every restart."""

    def __init__(
        self, config: AgentConfig, hardware: Hardware, hooks: BootHooks, clock: BoardClock | None = None
    ) -> None:
        self.config = config
        self.hardware = hardware
        self.hooks = hooks
        self.clock = clock
        self.agent: EdgeAgent | None = None
        self.boots = 0
        self.power_cuts = 0
        self._task: asyncio.Task[None] | None = None
        self._cut: asyncio.Event = asyncio.Event()
        self._off_s = 0.0

    async def start(self) -> EdgeAgent:
        self.agent = await self._boot()
        self._task = asyncio.create_task(self._supervise(), name=f"board:{self.config.device_id}")
        return self.agent

    async def _boot(self) -> EdgeAgent:
        ports = self.hardware.ports()
        if self.hooks.speaker is not None:
            version = (
                BootControl(self.config.state_dir, factory_version=self.config.firmware, factory_slot=self.config.slot)
                .next_boot()
                .version
            )
            ports["speaker"] = self.hooks.speaker(self.config.device_id, version, self.hardware.speaker)
        transport = self.hooks.transport(self.config.device_id) if self.hooks.transport else None
        agent = EdgeAgent(self.config, **ports, clock=self.clock, http_transport=transport)
        await agent.__aenter__()
        self.boots += 1
        if self.hooks.started is not None:
            self.hooks.started(agent)
        return agent

    async def _supervise(self) -> None:
        while True:
            agent = self.agent
            assert agent is not None  # noqa: S101 - set before this task starts
            restart = asyncio.create_task(agent.restart_requested.wait())
            cut = asyncio.create_task(self._cut.wait())
            await asyncio.wait({restart, cut}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (restart, cut):
                await cancel_and_wait(waiter)
            if self._cut.is_set():
                self._cut.clear()
                self.power_cuts += 1
                await agent.halt()
                if self.clock is not None:
                    self.clock.power_cut()
                await asyncio.sleep(self._off_s)
            else:
                await agent.__aexit__(None, None, None)
            try:
                self.agent = await self._boot()
            except Exception:
                log.exception("simulated device failed to boot", device_id=self.config.device_id)
                raise

    def power_cut(self, off_s: float) -> None:
        """Cut the power now (the agent stops dead) and restore it after `off_s`."""
        self._off_s = off_s
        self._cut.set()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self.agent is not None:
            agent, self.agent = self.agent, None
            await agent.__aexit__(None, None, None)


def fleet_device_ids(count: int, prefix: str = "SIM") -> list[str]:
    """The ids of a simulated fleet of `count` devices."""
    return [f"{prefix}{i:05d}" for i in range(1, count + 1)]


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
        model_of: Callable[[int], str] | None = None,
        agent_settings: dict[str, Any] | None = None,
        hooks: BootHooks | None = None,
        device_secrets: Mapping[str, bytes] | None = None,
        clocks: Mapping[str, BoardClock] | None = None,
    ) -> None:
        """`model_of(i)`: the model of the i-th device (1-based; default HD-S1, or HD-P1 for the
        POS terminals); `agent_settings`: more `AgentConfig` fields for every device;
        `device_secrets`: each device's provisioned secret, for a broker with access control
        (ids from `fleet_device_ids`); `clocks`: the board clocks of devices whose clock is
        wrong (the rest run on this machine's). Simulated modems give the network's time."""
        if count < 1:
            raise ValueError("a fleet needs at least one device")
        if not 0 <= serial_devices <= count:
            raise ValueError(f"serial_devices must be 0-{count}, not {serial_devices}")
        self.voice = VoicePack.builtin()
        self.base_dir = base_dir
        self.configs: list[AgentConfig] = []
        self.peers: dict[str, tuple[VirtualTtsChip, VirtualModem, VirtualPrinter]] = {}
        for i, device_id in enumerate(fleet_device_ids(count, prefix), start=1):
            ports: dict[str, str] = {}
            identity = {} if device_secrets is None else {"device_secret": encode_secret(device_secrets[device_id])}
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
                    model=model_of(i) if model_of else ("HD-P1" if ports else "HD-S1"),
                    health_interval_s=health_interval_s,
                    # The simulated boards run in this process: an update's bytes are an image.
                    ota_payload="image",
                    **ports,
                    **identity,
                    **(agent_settings or {}),
                )
            )
        self.hooks = hooks or BootHooks()
        self.clocks = dict(clocks or {})
        self.boards: dict[str, _Board] = {}
        self.modems: dict[str, SimulatedModem] = {}
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
                    hardware.modem.network_clock = true_ms  # the cell gives the true time
                board = _Board(config, hardware, self.hooks, self.clocks.get(config.device_id))
                await board.start()
                self.boards[config.device_id] = board
                self._stack.push_async_callback(board.stop)
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

    @property
    def agents(self) -> list[EdgeAgent]:
        """The agents running now (a restarting device's is briefly missing)."""
        return [board.agent for board in self.boards.values() if board.agent is not None]

    def agent(self, device_id: str) -> EdgeAgent | None:
        return self.boards[device_id].agent

    async def power_off(self, device_id: str) -> None:
        """Switch one device off for good (stolen, thrown away): its agent stops cleanly."""
        await self.boards[device_id].stop()

    def power_cut(self, device_id: str, off_s: float = 1.0) -> None:
        """Cut one device's power now; it boots again after `off_s`."""
        self.boards[device_id].power_cut(off_s)

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
