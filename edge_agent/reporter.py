"""What the device says about itself: its parts watched, a fault reported the moment it
appears, a health report every interval, and the diagnose checklist a field agent asks for.

Parts are read every `WATCH_INTERVAL_S` (or the health interval, if shorter); a part that turns
bad or good is an event at once (`fault` / `recovered`, see `health.PartWatch`); the full report
goes out every `health_interval_s` and is also left in the state folder (`status.json`) for a
diagnose run beside the agent.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from typing import Any

import structlog

from edge_agent import diagnose
from edge_agent.announcer import Announcer
from edge_agent.boot import Boot
from edge_agent.clock import Clock
from edge_agent.config import LiveConfig
from edge_agent.hardware.ports import Modem, Printer, SystemInfo
from edge_agent.health import PartWatch, health_report, part_states, read_parts
from edge_agent.outbox import Outbox
from edge_agent.state_files import read_json, write_json
from edge_agent.stats import AgentStats
from edge_agent.timekeeper import TimeKeeper
from edge_agent.uplink import Uplink
from edge_agent.voice import Speaker
from firmware_protocols import topics
from firmware_protocols.messages import Health
from mqtt_link.link import Link
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

# Parts are read this often (or at the health interval, if shorter) so that a fault is an event
# within seconds; reading a modem's five AT answers and /proc costs milliseconds.
WATCH_INTERVAL_S = 10.0


class HealthReporter(Component):
    def __init__(
        self,
        device_id: str,
        *,
        uplink: Uplink,
        link: Link,
        outbox: Outbox,
        config: LiveConfig,
        clock: Clock,
        stats: AgentStats,
        speaker: Speaker,
        modem: Modem,
        printer: Printer | None,
        system: SystemInfo | None,
        announcer: Announcer,
    ) -> None:
        """`announcer`: what the report says of announcements (queue, settings in force)."""
        self.device_id = device_id
        # This run's boot, once the agent runs (its id and reason go into every report).
        self.boot: Boot | None = None
        self._uplink = uplink
        self._link = link
        self._outbox = outbox
        self._config = config
        self._clock = clock
        self._stats = stats
        self._speaker = speaker
        self._modem = modem
        self._printer = printer
        self._system = system
        self._announcer = announcer
        self._started_ms = clock.now_ms()
        self._watch = PartWatch()
        self.timekeeper: TimeKeeper | None = None  # set by the agent: the clock's state in reports
        self._log = log.bind(device_id=device_id)

    async def _start(self, stack: AsyncExitStack) -> None:
        spawn(stack, self._watch_loop(), name=f"health:{self.device_id}")

    async def health(self) -> Health:
        """A health report, with what every hardware port says now."""
        parts = await read_parts(self._speaker, self._modem, self._printer, self._system)
        now = self._clock.now_ms()
        settings = self._announcer.settings.current
        config = self._config.current
        return health_report(
            self.device_id,
            now,
            parts,
            uptime_s=max(0, now - self._started_ms) // 1000,
            volume=settings.volume,
            queue_depth=self._announcer.queued,
            played_total=self._stats.played,
            boot_id=self.boot.boot_id if self.boot else None,
            boot_reason=self.boot.reason if self.boot else None,
            firmware=config.firmware,
            slot=config.slot,
            settings_version=settings.version or None,
            interval_s=config.health_interval_s,
            errors=self.errors(),
            **self._clock_fields(),
        )

    def _clock_fields(self) -> dict[str, Any]:
        keeper = self.timekeeper
        if keeper is None:
            return {}
        clock = keeper.clock
        return {"clock_offset_ms": clock.offset_ms, "clock_source": clock.source, "clock_error_ms": clock.error_ms}

    def errors(self) -> dict[str, int]:
        """Error counters since boot, as the health report carries them."""
        return {
            "play_failures": self._stats.play_failures,
            "bad_messages": self._stats.bad_messages,
            "refused": self._stats.refused,
            "receipt_failures": self._stats.receipt_failures,
            "link_drops": max(0, self._link.connects - 1),
            "outbox_evicted": self._outbox.evicted,
            "outbox_disk_failing": int(self._outbox.disk_error is not None),
        }

    async def check_parts(self) -> Health:
        """Read every part; report at once each one that turned bad or good since the last look."""
        health = await self.health()
        for change in self._watch.changes(part_states(health, self._config.current)):
            self._log.warning(
                "part state changed", kind=change.kind, part=change.part, state=change.state, was=change.was
            )
            await self._uplink.event(change.kind, part=change.part, state=change.state, was=change.was)
        return health

    async def run_diagnose(self) -> list[diagnose.Check]:
        """The field agent's checklist, as the running agent sees it (the clock asked again)."""
        if self.timekeeper is not None and self.timekeeper.sources:
            await self.timekeeper.sync()
        health = await self.health()
        connected = self._link.connected.is_set()
        observed = diagnose.Observed(
            health=health,
            broker_ok=connected,
            broker_detail=f"{self._link.endpoint.url()} {'✓' if connected else '✗'}",
            now_ms=self._clock.now_ms(),
            agent_pid=os.getpid(),
            last_announcement=read_json(self._config.current.state_dir / diagnose.LAST_ANNOUNCEMENT_FILE),
            clock=self.timekeeper.status() if self.timekeeper is not None else None,
        )
        return diagnose.checklist(observed, self._config.current)

    async def _watch_loop(self) -> None:
        next_report = 0.0
        loop = asyncio.get_running_loop()
        while True:
            health = await self.check_parts()
            interval = self._config.current.health_interval_s
            if loop.time() >= next_report:
                await self._uplink.send(topics.Up.HEALTH, health)
                next_report = loop.time() + interval
                await self._leave_status(health)
            await asyncio.sleep(min(WATCH_INTERVAL_S, interval))

    async def _leave_status(self, health: Health) -> None:
        """The last report and link state, for a diagnose run beside the agent."""
        status = {
            "health": health.model_dump(mode="json"),
            "connected": self._link.connected.is_set(),
            "written_ms": self._clock.now_ms(),
        }
        try:
            await asyncio.to_thread(write_json, self._config.current.state_dir / diagnose.STATUS_FILE, status)
        except OSError as exc:
            self._log.warning("cannot write status file", error=str(exc))
