"""A fleet of simulated devices, each running the real edge agent over simulated hardware.

Every device gets its own MQTT session, state folder (dedup window) and WAV-writing speaker,
so `<base>/audio/<device_id>/<payment_id>.wav` is what that device "said".
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Self

from edge_agent.agent import AgentStats, EdgeAgent
from edge_agent.audio import VoicePack, WavFileSink
from edge_agent.config import AgentConfig
from edge_agent.hardware import SimulatedModem


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
    ) -> None:
        if count < 1:
            raise ValueError("a fleet needs at least one device")
        voice = VoicePack.builtin()
        self.base_dir = base_dir
        self.agents = [
            EdgeAgent(
                AgentConfig(
                    device_id=f"{prefix}{i:05d}",
                    broker_url=broker_url,
                    server_keys=server_keys,
                    state_dir=base_dir / "state" / f"{prefix}{i:05d}",
                    serial=f"HD{prefix}{i:08d}",
                    health_interval_s=health_interval_s,
                ),
                sink=WavFileSink(base_dir / "audio" / f"{prefix}{i:05d}"),
                voice=voice,
                modem=SimulatedModem(seed=i),
            )
            for i in range(1, count + 1)
        ]
        self._stack = contextlib.AsyncExitStack()

    @property
    def device_ids(self) -> list[str]:
        return [agent.device_id for agent in self.agents]

    async def __aenter__(self) -> Self:
        for agent in self.agents:
            await self._stack.enter_async_context(agent)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.gather(*(agent.wait_connected(timeout_s) for agent in self.agents))

    def online(self) -> int:
        return sum(agent.connected for agent in self.agents)

    def stats(self) -> AgentStats:
        total = AgentStats()
        for agent in self.agents:
            for name, value in asdict(agent.stats).items():
                setattr(total, name, getattr(total, name) + value)
        return total
