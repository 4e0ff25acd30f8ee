"""The inspector: the fleet server's periodic round.

Each round (every `interval_s`): heartbeats (a device silent for 1.5 x its interval goes
offline), the detectors over every device that could have a finding, tasks opened or merged,
devices back in place or active again, tasks verified, the figure rollups kept (moved devices,
the hourly checkpoint), telemetry partitions maintained. Only
one process runs a round at a time (a PostgreSQL advisory lock), so several fleet-server
processes can run side by side.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from fleet_server.db.fetch import fetch_dicts, fetch_rows
from fleet_server.devices import rollups, tracker
from fleet_server.devices.states import DeviceState, Signal
from fleet_server.devices.tracker import Observation
from fleet_server.ingest.telemetry import TelemetryStore
from fleet_server.inspection import queries
from fleet_server.inspection.detectors import (
    OFFLINE_AFTER_INTERVALS,
    CellSeen,
    ClockFacts,
    DeviceFacts,
    Finding,
    InspectionThresholds,
    inspect,
)
from fleet_server.inspection.placement import placement
from fleet_server.inspection.tasks import TaskBook
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

_ROUND_LOCK = 0x4844_0002


@dataclass(slots=True)
class RoundReport:
    at: datetime
    went_offline: int = 0
    findings: list[Finding] = field(default_factory=list)
    opened: int = 0
    merged: int = 0
    back_in_place: int = 0
    active_again: int = 0
    closed_tasks: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)  # tasks past their due time, escalated now
    resliced: int = 0
    checkpoint: datetime | None = None
    skipped: bool = False


def _pair(a: float | None, b: float | None) -> tuple[float, float] | None:
    return None if a is None or b is None else (a, b)


class Inspector(Component):
    def __init__(
        self,
        pool: AsyncConnectionPool,
        thresholds: InspectionThresholds,
        *,
        telemetry: TelemetryStore | None = None,
        fleet_utc_offset_min: int = 480,
    ) -> None:
        self._pool = pool
        self.thresholds = thresholds
        self.tasks = TaskBook(pool)
        self._telemetry = telemetry
        self._offset = timedelta(minutes=fleet_utc_offset_min)
        self._offset_min = fleet_utc_offset_min
        self.last_round: RoundReport | None = None
        self.rounds = 0

    async def _start(self, stack: AsyncExitStack) -> None:
        spawn(stack, self._run(), name="inspector")

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once(datetime.now(tz=UTC))
            except psycopg.Error as exc:
                log.warning("inspection round failed; next round will retry", error=str(exc))
            await asyncio.sleep(self.thresholds.interval_s)

    async def run_once(self, now: datetime) -> RoundReport:
        report = RoundReport(at=now)
        async with self._pool.connection() as lock_conn:
            cur = await lock_conn.execute(queries.TRY_ROUND_LOCK, (_ROUND_LOCK,))
            row = await cur.fetchone()
            if not row or not row[0]:
                report.skipped = True
                return report
            try:
                await self._round(now, report)
            finally:
                await lock_conn.execute(queries.ROUND_UNLOCK, (_ROUND_LOCK,))
        self.last_round, self.rounds = report, self.rounds + 1
        if report.went_offline or report.opened or report.closed_tasks or report.back_in_place or report.escalated:
            log.info(
                "inspection round",
                went_offline=report.went_offline,
                findings=len(report.findings),
                opened=report.opened,
                merged=report.merged,
                back_in_place=report.back_in_place,
                active_again=report.active_again,
                closed_tasks=report.closed_tasks,
                escalated=report.escalated,
            )
        return report

    async def _round(self, now: datetime, report: RoundReport) -> None:
        report.went_offline = await self._heartbeats(now)
        facts = await self.facts(now)
        signals: list[Observation] = []
        for f in facts:
            report.findings.extend(inspect(f, self.thresholds, now))
            if f.state is DeviceState.RELOCATED:
                where = placement(f, self.thresholds)
                if where is not None and not where.away:
                    signals.append(Observation(f.device_id, now, Signal.BACK_IN_PLACE, "cells_back_in_fingerprint"))
                    report.back_in_place += 1
        report.active_again = await self._active_again(now, signals)
        if signals:
            async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await tracker.apply(cur, signals)
        report.opened, report.merged = await self.tasks.record(report.findings, now)
        report.closed_tasks = await self.tasks.verify(now)
        report.escalated = await self.tasks.escalate(now)
        # The figure rollups: devices moved to their new slice, the hour's checkpoint (the first
        # round builds them; late history rebuilds them).
        report.resliced = await rollups.move_resliced(self._pool, fleet_offset_min=self._offset_min)
        report.checkpoint = await rollups.checkpoint(self._pool, now, fleet_offset_min=self._offset_min)
        if self._telemetry is not None:
            await self._telemetry.maintain(now)

    async def _heartbeats(self, now: datetime) -> int:
        """Devices in an up state silent for 1.5 x their health interval (the one each reported,
        or the fleet's default) go offline, as of that moment."""
        factor, default = OFFLINE_AFTER_INTERVALS, self.thresholds.heartbeat_interval_s
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(queries.SILENT, (factor, default, now))
            observations = [
                Observation(device, at, Signal.HEARTBEAT_MISSED, "heartbeat_missed", {"silent_s": round(allowance)})
                for device, at, allowance in await cur.fetchall()
            ]
            made = await tracker.apply(cur, observations)
        return len(made)

    async def _active_again(self, now: datetime, signals: list[Observation]) -> int:
        """Idle devices whose merchant took a payment after they went idle."""
        devices = [row[0] for row in await fetch_rows(self._pool, queries.ACTIVE_AGAIN)]
        signals.extend(Observation(device, now, Signal.ACTIVE, "merchant_payment") for device in devices)
        return len(devices)

    async def facts(self, now: datetime) -> list[DeviceFacts]:
        """Facts of every device that could have a finding (the rest cannot, by the SQL filter)."""
        t = self.thresholds
        since_day = (now + self._offset).date() - timedelta(days=1)
        async with self._pool.connection() as conn:
            rows = await fetch_dicts(
                conn,
                queries.FACTS,
                {
                    "since_day": since_day,
                    "since": datetime.combine(since_day, datetime.min.time(), tzinfo=UTC) - self._offset,
                    "flapping": t.flapping_reconnects,
                    "idle_before": now - timedelta(days=t.idle_after_days),
                    "poison": t.poison_messages,
                    "clock_board_ms": t.clock_board_off_s * 1000,
                    "clock_skew_ms": t.clock_skew_s * 1000,
                    "anchor": timedelta(hours=t.relocation_anchor_h),
                },
            )
            cell_rows = await fetch_dicts(conn, queries.CELLS, ([row["device_id"] for row in rows],))
        cells: dict[str, list[CellSeen]] = defaultdict(list)
        for c in cell_rows:
            cells[c["device_id"]].append(
                CellSeen(c["cell"], c["area"], c["learned"], c["first_seen"], c["last_seen"], c["reports"])
            )
        return [
            DeviceFacts(
                device_id=row["device_id"],
                state=DeviceState(row["state"]),
                last_seen=row["last_seen"],
                planned_removal=row["planned_removal"],
                merchant_first_payment_at=row["first_at"],
                merchant_last_payment_at=row["last_at"],
                fault_events=int(row["fault_events"]),
                audio_failures=int(row["audio_failures"]),
                reconnects=int(row["reconnects"]),
                degraded_events=int(row["degraded_events"]),
                degraded_parts=tuple(row["degraded_parts"]),
                quarantined=int(row["quarantined"]),
                state_cause=row["cause"],
                recently_closed=frozenset(row["closed_kinds"]),
                cells=tuple(cells.get(row["device_id"], ())),
                install_position=_pair(row["install_lat"], row["install_lon"]),
                learning_from=row["learning_from"],
                gps=_pair(row["last_gps_lat"], row["last_gps_lon"]),
                clock=ClockFacts(
                    row["clock_board_offset_ms"],
                    row["clock_skew_ms"],
                    row["clock_reported_at"],
                    row["clock_refused_skew_s"],
                    row["clock_refused_at"],
                ),
            )
            for row in rows
        ]
