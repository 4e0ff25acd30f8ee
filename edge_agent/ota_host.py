"""The agent's side of an update: offers in, the updater's reports out, its restarts, and the
new version's health check.

The downlink checks an offer's signature; here it must also be current, and then the updater
(`ota.updater`) takes it. The updater calls back through `UpdateHost`: its reports go up on
`up/ota`; a restart into the new slot (or back to the old one) is recorded and asked of whoever
runs the agent; and the health check asks the running system: the broker reached, the speaker's
self test, the announce path up to the speaker.
"""

from __future__ import annotations

import structlog

from edge_agent.announcer import Announcer
from edge_agent.boot import Restart
from edge_agent.clock import Clock
from edge_agent.hardware.errors import HardwareError
from edge_agent.ota.updater import Updater
from edge_agent.stats import AgentStats
from edge_agent.uplink import Uplink
from edge_agent.voice import Speaker
from firmware_protocols import topics
from firmware_protocols.messages import OtaOffer, OtaStatus
from mqtt_link.link import Delivery, Link

log = structlog.get_logger(__name__)


class OtaHost:
    def __init__(
        self,
        device_id: str,
        *,
        uplink: Uplink,
        link: Link,
        restart: Restart,
        speaker: Speaker,
        announcer: Announcer,
        clock: Clock,
        stats: AgentStats,
        health_timeout_s: float,
    ) -> None:
        self.device_id = device_id
        # The updater, once the agent runs and knows which slot it booted.
        self.updater: Updater | None = None
        self._uplink = uplink
        self._link = link
        self._restart = restart
        self._speaker = speaker
        self._announcer = announcer
        self._clock = clock
        self._stats = stats
        self._health_timeout_s = health_timeout_s
        self._log = log.bind(device_id=device_id)

    async def take(self, offer: OtaOffer, _delivery: Delivery) -> None:
        """Hand a signed offer to the updater if it is still current."""
        if self._clock.now_ms() > offer.expires_at():
            self._stats.refused += 1
            await self.refuse(offer, f"{offer.describe()}: expired")
            return
        if self.updater is not None:
            await self.updater.offer(offer)

    async def refuse(self, offer: OtaOffer, reason: str) -> None:
        self._log.warning("ota offer refused", reason=reason)
        await self._uplink.event("ota_refused", campaign_id=offer.campaign_id, reason=reason[:200])

    # -- what the updater needs (ota.updater.UpdateHost) --------------------------------------

    async def send_ota_status(self, status: OtaStatus) -> None:
        await self._uplink.send(topics.Up.OTA, status)

    def request_restart(self, reason: str) -> None:
        self._restart.ask("rollback" if reason == "rollback" else "ota")
        self._restart.requested.set()

    async def health_problems(self) -> list[str]:
        """The new version's health check: the broker is reached, the speaker passes its self
        test, and the announce path works up to the speaker."""
        problems: list[str] = []
        try:
            await self._link.wait_connected(self._health_timeout_s)
        except TimeoutError:
            problems.append(f"broker not reached in {self._health_timeout_s:.0f} s")
        try:
            await self._speaker.self_test()
        except HardwareError as exc:
            problems.append(f"audio self-test: {exc}")
        if (problem := self._announcer.rehearse()) is not None:
            problems.append(problem)
        return problems
