"""The conductor: runs OTA campaigns. Takes the devices' reports (`up/ota`) and, every round,
reconciles targets with what devices say they run, times out and retries, moves each lane
through its waves or pauses it, and sends the offers that follow (signed, `down/ota`).

    async with OtaConductor(store, endpoint, signer, artifact_base_url=..., client_id=...) as conductor:
        ...

Reports are stored in batches; one lost in a crash is not lost for good: the device's hello
says which version it runs (reconciliation), and a target with no news is offered again after
the campaign's device timeout, which a device answers with where its job is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import psycopg
import structlog

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import OtaOffer, OtaStatus
from firmware_protocols.ota import ReleaseManifest
from firmware_protocols.signing import Signer
from fleet_server.db import failures
from fleet_server.identity.reports import ReportAuthority
from fleet_server.ota.store import OtaStore, PlannedOffer
from fleet_server.quarantine.store import Quarantine
from mqtt_link.errors import LinkDown
from mqtt_link.routing import Inbound, Router, consumer_link
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

# An offer may be taken this long after it was sent (a device offline for the night takes it
# in the morning, and waits for its next install window); the campaign offers again after.
OFFER_TTL_S = 24 * 3600
REPORT_BATCH = 500


@dataclass(slots=True)
class ConductorStats:
    reports: int = 0
    offers_sent: int = 0
    offers_failed: int = 0
    rounds: int = 0
    round_errors: int = 0


class OtaConductor(Component):
    def __init__(
        self,
        store: OtaStore,
        endpoint: BrokerEndpoint,
        signer: Signer,
        *,
        artifact_base_url: str,
        client_id: str,
        round_s: float = 5.0,
        share_group: str | None = None,
        quarantine: Quarantine | None = None,
        authority: ReportAuthority | None = None,
    ) -> None:
        self.store = store
        self.stats = ConductorStats()
        self.artifact_base_url = artifact_base_url.rstrip("/")
        self._signer = signer
        self._round_s = round_s
        self._reports: asyncio.Queue[Inbound[OtaStatus]] = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self.quarantine = quarantine or Quarantine(store.pool)
        self.reports_in = Router(
            "ota",
            topics.Direction.UP,
            on_reject=self.quarantine.hook("ota"),
            verify=authority.verify if authority is not None else None,
        )
        self.reports_in.route(topics.Up.OTA, OtaStatus, self._on_report)
        # A report is acknowledged to the broker once stored (or quarantined): a server killed in
        # between has the broker send it again.
        self._link = consumer_link(
            self.reports_in, endpoint, client_id=client_id, share_group=share_group, manual_ack=True
        )

    async def _start(self, stack: AsyncExitStack) -> None:
        await stack.enter_async_context(self._link)
        spawn(stack, self._store_reports(), name="ota-reports")
        spawn(stack, self._rounds(), name="ota-rounds")

    async def wait_connected(self, timeout_s: float) -> None:
        await self._link.wait_connected(timeout_s)

    def nudge(self) -> None:
        """Run a round now (a campaign was created or resumed)."""
        self._wakeup.set()

    # -- reports in ------------------------------------------------------------------------

    async def _on_report(self, inbound: Inbound[OtaStatus]) -> None:
        self._reports.put_nowait(inbound)

    async def _store_reports(self) -> None:
        async def write(part: Sequence[Inbound[OtaStatus]]) -> None:
            await self.store.record_reports([inbound.message for inbound in part])

        async def wait_out(exc: Exception) -> None:
            log.warning("ota reports not stored; retrying", error=failures.describe(exc))
            await asyncio.sleep(1.0)

        while True:
            batch = [await self._reports.get()]
            while not self._reports.empty() and len(batch) < REPORT_BATCH:
                batch.append(self._reports.get_nowait())
            # An outage is waited out; a report the database can never take is quarantined.
            await self.quarantine.store_apart(
                "ota", batch, write, delivery_of=lambda i: i.delivery, on_transient=wait_out
            )
            for inbound in batch:
                if inbound.delivery.receipt is not None:
                    inbound.delivery.receipt.ack()
            self.stats.reports += len(batch)
            if any(inbound.message.state.terminal for inbound in batch):
                self._wakeup.set()  # a wave may have ended

    # -- rounds ----------------------------------------------------------------------------

    async def _rounds(self) -> None:
        while True:
            try:
                await self.run_round()
            except psycopg.Error as exc:
                self.stats.round_errors += 1
                log.warning("ota round failed; next round retries", error=str(exc))
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._round_s)
            # Let a burst of reports land before deciding on them.
            await asyncio.sleep(min(0.2, self._round_s))

    async def run_round(self) -> int:
        """One round; return how many offers were sent."""
        offers = await self.store.plan_round()
        self.stats.rounds += 1
        if not offers:
            return 0
        manifests: dict[str, ReleaseManifest] = {}
        for planned in offers:
            await self._send(planned, manifests)
        log.info("ota offers sent", offers=len(offers))
        return len(offers)

    async def _send(self, planned: PlannedOffer, manifests: dict[str, ReleaseManifest]) -> None:
        key = f"{planned.manifest['name']}/{planned.manifest['version']}"
        manifest = manifests.get(key) or manifests.setdefault(key, ReleaseManifest.model_validate(planned.manifest))
        now_ms = _now_ms()
        offer = self._signer.sign(
            OtaOffer(
                device_id=planned.device_id,
                ts=now_ms,
                key_id=self._signer.key_id,
                issued_at=now_ms,
                ttl_s=OFFER_TTL_S,
                campaign_id=planned.campaign_id,
                manifest=manifest,
                url=f"{self.artifact_base_url}/ota/artifacts/{manifest.sha256}",
                window=planned.window,
                utc_offset_min=planned.utc_offset_min,
                max_rate_bps=planned.max_rate_bps,
            )
        )
        try:
            await self._link.publish(topics.down(planned.device_id, topics.Down.OTA), offer.to_json())
        except LinkDown as exc:
            # The target stays "offered"; its device timeout offers it again.
            self.stats.offers_failed += 1
            log.warning("ota offer not sent", device_id=planned.device_id, error=str(exc))
            return
        self.stats.offers_sent += 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
