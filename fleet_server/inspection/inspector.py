"""The inspector: the fleet server's periodic round.

Each round (every `interval_s`): heartbeats (a device silent for 1.5 x its interval goes
offline), the detectors over every device that could have a finding, tasks opened or merged,
devices back in place or active again, tasks verified, telemetry partitions maintained. Only
one process runs a round at a time (a PostgreSQL advisory lock), so several fleet-server
processes can run side by side.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from fleet_server.devices import tracker
from fleet_server.devices.states import UP_STATES, DeviceState, Signal
from fleet_server.devices.tracker import Observation
from fleet_server.ingest.telemetry import TelemetryStore
from fleet_server.inspection.detectors import CellSeen, DeviceFacts, Finding, InspectionThresholds, inspect, placement
from fleet_server.inspection.tasks import TaskBook
from mqtt_link.tasks import cancel_and_wait

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
    skipped: bool = False


_FACTS = """
WITH merchant_payments AS (
    SELECT merchant_id, min(received_at) AS first_at, max(received_at) AS last_at FROM payments GROUP BY merchant_id
),
recent AS (
    SELECT device_id, sum(fault_events) AS fault_events, sum(audio_failures) AS audio_failures,
           sum(reconnects) AS reconnects
    FROM device_daily WHERE day >= %(since_day)s GROUP BY device_id
),
closed AS (
    SELECT device_id, array_agg(DISTINCT kind) AS kinds FROM tasks
    WHERE status = 'closed' AND closed_at >= %(since)s GROUP BY device_id
),
last_cause AS (
    SELECT DISTINCT ON (device_id) device_id, cause FROM device_states
    WHERE device_id IN (SELECT device_id FROM devices WHERE state = 'faulty')
    ORDER BY device_id, at DESC, seq DESC
)
SELECT d.device_id, d.state, d.last_seen, d.planned_removal, d.install_lat, d.install_lon,
       d.last_gps_lat, d.last_gps_lon, mp.first_at, mp.last_at, lc.cause,
       COALESCE(r.fault_events, 0) AS fault_events, COALESCE(r.audio_failures, 0) AS audio_failures,
       COALESCE(r.reconnects, 0) AS reconnects, COALESCE(cl.kinds, '{}') AS closed_kinds
FROM devices d
LEFT JOIN bindings b USING (device_id)
LEFT JOIN merchant_payments mp USING (merchant_id)
LEFT JOIN recent r USING (device_id)
LEFT JOIN last_cause lc USING (device_id)
LEFT JOIN closed cl USING (device_id)
WHERE d.state IS NOT NULL AND d.state <> 'retired'
  AND (d.state IN ('faulty', 'offline', 'suspected_lost', 'relocated')
       OR r.fault_events > 0 OR r.audio_failures > 0 OR r.reconnects >= %(flapping)s
       OR (mp.last_at < %(idle_before)s AND d.state = 'in_service')
       OR EXISTS (SELECT 1 FROM device_cells c WHERE c.device_id = d.device_id AND NOT c.learned))
"""


def _pair(a: float | None, b: float | None) -> tuple[float, float] | None:
    return None if a is None or b is None else (a, b)


class Inspector:
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
        self._loop: asyncio.Task[None] | None = None
        self.last_round: RoundReport | None = None
        self.rounds = 0

    async def __aenter__(self) -> Self:
        self._loop = asyncio.create_task(self._run(), name="inspector")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None:
            await cancel_and_wait(self._loop)

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
            cur = await lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (_ROUND_LOCK,))
            row = await cur.fetchone()
            if not row or not row[0]:
                report.skipped = True
                return report
            try:
                await self._round(now, report)
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_ROUND_LOCK,))
        self.last_round, self.rounds = report, self.rounds + 1
        if report.went_offline or report.opened or report.closed_tasks or report.back_in_place:
            log.info(
                "inspection round",
                went_offline=report.went_offline,
                findings=len(report.findings),
                opened=report.opened,
                merged=report.merged,
                back_in_place=report.back_in_place,
                active_again=report.active_again,
                closed_tasks=report.closed_tasks,
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
        if self._telemetry is not None:
            await self._telemetry.maintain(now)

    async def _heartbeats(self, now: datetime) -> int:
        """Devices in an up state silent for 1.5 x the interval go offline, as of that moment."""
        silent_for = timedelta(seconds=self.thresholds.offline_after_s)
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "SELECT device_id, GREATEST(last_seen + %s, state_since) FROM devices"
                " WHERE state = ANY(%s) AND last_seen < %s",
                (silent_for, sorted(s.value for s in UP_STATES), now - silent_for),
            )
            observations = [
                Observation(device, at, Signal.HEARTBEAT_MISSED, "heartbeat_missed", {"silent_s": silent_for.seconds})
                for device, at in await cur.fetchall()
            ]
            made = await tracker.apply(cur, observations)
        return len(made)

    async def _active_again(self, now: datetime, signals: list[Observation]) -> int:
        """Idle devices whose merchant took a payment after they went idle."""
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT d.device_id FROM devices d JOIN bindings b USING (device_id)"
                " WHERE d.state = 'idle' AND EXISTS (SELECT 1 FROM payments p"
                "  WHERE p.merchant_id = b.merchant_id AND p.received_at > d.state_since)"
            )
            devices = [row[0] for row in await cur.fetchall()]
        signals.extend(Observation(device, now, Signal.ACTIVE, "merchant_payment") for device in devices)
        return len(devices)

    async def facts(self, now: datetime) -> list[DeviceFacts]:
        """Facts of every device that could have a finding (the rest cannot, by the SQL filter)."""
        t = self.thresholds
        since_day = (now + self._offset).date() - timedelta(days=1)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _FACTS,
                {
                    "since_day": since_day,
                    "since": datetime.combine(since_day, datetime.min.time(), tzinfo=UTC) - self._offset,
                    "flapping": t.flapping_reconnects,
                    "idle_before": now - timedelta(days=t.idle_after_days),
                },
            )
            rows: list[dict[str, Any]] = await cur.fetchall()
            ids = [row["device_id"] for row in rows]
            await cur.execute(
                "SELECT device_id, cell, area, learned, first_seen, last_seen, reports FROM device_cells"
                " WHERE device_id = ANY(%s)",
                (ids,),
            )
            cells: dict[str, list[CellSeen]] = defaultdict(list)
            for c in await cur.fetchall():
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
                state_cause=row["cause"],
                recently_closed=frozenset(row["closed_kinds"]),
                cells=tuple(cells.get(row["device_id"], ())),
                install_position=_pair(row["install_lat"], row["install_lon"]),
                gps=_pair(row["last_gps_lat"], row["last_gps_lon"]),
            )
            for row in rows
        ]
