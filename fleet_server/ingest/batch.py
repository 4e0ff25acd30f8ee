"""One batch of device messages turned into the rows each table gets, and written in one
transaction: device upserts, hello and presence fields, events and health rows, the daily rollup,
the serving cells, and the state transitions the batch causes. The SQL is in `queries`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from firmware_protocols.fields import TIME_FLOOR_MS
from firmware_protocols.messages import Event, Health, Hello, Message, Presence
from fleet_server.db.batch import columns, copy_rows
from fleet_server.devices import rollups, spans, tracker
from fleet_server.devices.parts import Impact, impact_of
from fleet_server.devices.states import Signal
from fleet_server.devices.tracker import Observation
from fleet_server.ingest import queries
from mqtt_link.link import Delivery

# A device time more than this ahead of the server's is a wrong clock, not a time to file a row
# under (the protocol allows up to year 5138: a chunk or partition no retention would ever reach).
FUTURE_ALLOWANCE_MS = 86_400_000


def implausible_time(ts_ms: int, received_at: datetime) -> str | None:
    """Why a device's time cannot be the time its telemetry row is filed under, or None."""
    if ts_ms < TIME_FLOOR_MS:
        return "clock_unset"  # before 2023-01-01: a board or modem that lost its time
    if ts_ms > received_at.timestamp() * 1000 + FUTURE_ALLOWANCE_MS:
        return "clock_ahead"
    return None


@dataclass(frozen=True, slots=True)
class Received:
    received_at: datetime
    message: Message
    # What the broker handed over (None in tests that write batches directly): acknowledged
    # once the batch holding it commits, or quarantined as it came if it can never be stored.
    delivery: Delivery | None = None

    @property
    def time_refused(self) -> str | None:
        """Why the device's time is not this message's row time (it is filed at receipt), or None."""
        return implausible_time(self.message.ts, self.received_at)

    def filed(self) -> tuple[datetime, str | None]:
        """The time the message's telemetry row is filed under (the device's, when plausible)
        and why not the device's (None: it is)."""
        why = self.time_refused
        if why is not None:
            return self.received_at, why
        return datetime.fromtimestamp(self.message.ts / 1000, tz=UTC), None


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    # The fleet's "day" for the daily rollup and power-on rate: China Standard Time.
    utc_offset_min: int = 480
    # Cells seen this long after installation or first contact, whichever is later, are the
    # location fingerprint: a device registered before it is switched on learns from its first report.
    cell_learning_days: float = 3.0
    clean_reports_to_verify: int = tracker.CLEAN_REPORTS_TO_VERIFY

    def local_day(self, at: datetime) -> date:
        return (at + timedelta(minutes=self.utc_offset_min)).date()


def _health_clean(msg: Health) -> bool:
    return msg.audio_selftest != "fail" and msg.modem != "unreachable" and msg.tts != "unreachable"


def observations_of(item: Received) -> list[Observation]:
    """What one message says about its device's state."""
    msg, at = item.message, item.received_at
    if isinstance(msg, Presence):
        if msg.online:
            return [Observation(msg.device_id, at, Signal.SEEN, "presence_online")]
        return [Observation(msg.device_id, at, Signal.PRESENCE_OFFLINE, f"presence_{msg.reason}")]
    if isinstance(msg, Health):
        if msg.audio_selftest == "fail":
            return [Observation(msg.device_id, at, Signal.FAULT, "audio_selftest_failed")]
        if _health_clean(msg):
            return [Observation(msg.device_id, at, Signal.HEALTHY, "health_clean")]
    # A fault of a part that stops announcements fails the device; others (printer paper,
    # battery) are counted for the maintenance detector: the speaker still announces (parts.py).
    if isinstance(msg, Event) and msg.kind == "fault" and impact_of(msg.detail.get("part")) is Impact.FAILED:
        detail = {k: v for k, v in msg.detail.items() if k in ("part", "state", "was")}
        return [Observation(msg.device_id, at, Signal.FAULT, f"fault_{msg.detail.get('part')}", detail)]
    return [Observation(msg.device_id, at, Signal.SEEN, type(msg).__name__.lower())]


@dataclass(slots=True)
class _Day:
    messages: int = 0
    health_reports: int = 0
    fault_events: int = 0
    degraded_events: int = 0
    audio_failures: int = 0
    reconnects: int = 0
    min_rssi_dbm: int | None = None
    degraded_parts: list[str] = field(default_factory=list)
    first_at: datetime | None = None
    last_at: datetime | None = None

    def counts(self) -> tuple[object, ...]:
        """The rollup columns after (device_id, day), in table order."""
        return (
            self.messages,
            self.health_reports,
            self.fault_events,
            self.degraded_events,
            self.audio_failures,
            self.reconnects,
            self.min_rssi_dbm,
            json.dumps(self.degraded_parts),
            self.first_at,
            self.last_at,
        )

    def add(self, item: Received) -> None:
        msg, at = item.message, item.received_at
        self.messages += 1
        self.first_at = at if self.first_at is None else min(self.first_at, at)
        self.last_at = at if self.last_at is None else max(self.last_at, at)
        if isinstance(msg, Health):
            self.health_reports += 1
            self.audio_failures += msg.audio_selftest == "fail"
            if msg.rssi_dbm is not None:
                self.min_rssi_dbm = msg.rssi_dbm if self.min_rssi_dbm is None else min(self.min_rssi_dbm, msg.rssi_dbm)
        elif isinstance(msg, Event) and msg.kind == "fault":
            if impact_of(msg.detail.get("part")) is Impact.FAILED:
                self.fault_events += 1
            else:
                self.degraded_events += 1
                part = msg.detail.get("part")
                if isinstance(part, str) and part not in self.degraded_parts:
                    self.degraded_parts.append(part[:32])
        elif isinstance(msg, Hello):
            self.reconnects += 1


def cell_of(msg: Health) -> tuple[str, str] | None:
    """(cell, area) keys of the serving cell, or None when the modem did not name it."""
    c = msg.cell
    if c is None or c.area is None or c.cell_id is None:
        return None
    area = f"{c.mcc}-{c.mnc}-{c.area.upper()}"
    return f"{area}-{c.cell_id.upper()}", area


@dataclass(slots=True)
class _Rows:
    """One batch sorted into the rows each table gets."""

    policy: IngestPolicy
    seen: dict[str, datetime] = field(default_factory=dict)
    first: dict[str, datetime] = field(default_factory=dict)
    # The latest hello and presence of each device in the batch (arrival order).
    hellos: dict[str, tuple[object, ...]] = field(default_factory=dict)
    presences: dict[str, tuple[object, ...]] = field(default_factory=dict)
    events: list[tuple[object, ...]] = field(default_factory=list)
    health: list[tuple[object, ...]] = field(default_factory=list)
    days: dict[tuple[str, date], _Day] = field(default_factory=lambda: defaultdict(_Day))
    cells: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    positions: dict[str, tuple[str | None, float | None, float | None]] = field(default_factory=dict)
    # The health interval each device last said it keeps (arrival order).
    intervals: dict[str, float] = field(default_factory=dict)
    clocks: dict[str, tuple[object, ...]] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)

    def add(self, item: Received) -> None:
        msg, at = item.message, item.received_at
        self.seen[msg.device_id] = max(self.seen.get(msg.device_id, at), at)
        self.first[msg.device_id] = min(self.first.get(msg.device_id, at), at)
        self.days[msg.device_id, self.policy.local_day(at)].add(item)
        self.observations.extend(observations_of(item))
        if isinstance(msg, Hello):
            self.hellos[msg.device_id] = (msg.serial, msg.model, msg.firmware, msg.boot_id, msg.slot, at, msg.device_id)
        elif isinstance(msg, Presence):
            self.presences[msg.device_id] = (msg.online, msg.reason, at, msg.session, msg.device_id)
        elif isinstance(msg, Event):
            # Filed at receipt when the device's time is implausible; the device's own is kept.
            filed_at, why = item.filed()
            detail = msg.detail if why is None else {**msg.detail, "device_ts": msg.ts}
            self.events.append((msg.device_id, filed_at, at, msg.kind, json.dumps(detail)))
        elif isinstance(msg, Health):
            self._add_health(msg, at, item.filed()[0])

    def _add_health(self, msg: Health, at: datetime, filed_at: datetime) -> None:
        self.health.append(
            (
                msg.device_id,
                filed_at,  # the report itself (payload) keeps the device's time
                at,
                msg.uptime_s,
                msg.rssi_dbm,
                msg.volume,
                msg.queue_depth,
                msg.played_total,
                msg.mem_rss_kb,
                msg.model_dump_json(),
            )
        )
        self._add_clock(msg, at)
        if msg.interval_s is not None:
            self.intervals[msg.device_id] = msg.interval_s
        keys = cell_of(msg)
        if keys is not None:
            entry = self.cells.setdefault((msg.device_id, keys[0]), [keys[1], at, at, 0])
            entry[1], entry[2] = min(entry[1], at), max(entry[2], at)
            entry[3] += 1
        # The last known of each, as if the reports had been applied one by one.
        cell, lat, lon = self.positions.get(msg.device_id, (None, None, None))
        if keys is not None:
            cell = keys[0]
        if msg.gps is not None:
            lat, lon = msg.gps.lat, msg.gps.lon
        self.positions[msg.device_id] = (cell, lat, lon)

    def _add_clock(self, msg: Health, at: datetime) -> None:
        skew_ms = msg.ts - int(at.timestamp() * 1000)
        held = self.clocks.get(msg.device_id)
        # The largest skew of the batch: a report that waited in the outbox only looks slower.
        if held is not None and isinstance(held[4], int) and held[4] > skew_ms:
            skew_ms = held[4]
        self.clocks[msg.device_id] = (
            msg.device_id,
            msg.clock_offset_ms,
            msg.clock_source,
            msg.clock_error_ms,
            skew_ms,
            at,
        )


async def write_batch(
    pool: AsyncConnectionPool, batch: list[Received], policy: IngestPolicy | None = None
) -> list[tracker.Transition]:
    """Write one batch in one transaction: telemetry, the daily rollup, cells and device states."""
    policy = policy or IngestPolicy()
    rows = _Rows(policy)
    for item in batch:
        rows.add(item)
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        # The rollup lock before any device row: a rebuild takes it first and then the rows.
        await rollups.lock_shared(cur)
        no_position = (None, None, None)
        devices = (
            (d, rows.first[d], last, *rows.positions.get(d, no_position), rows.intervals.get(d))
            for d, last in sorted(rows.seen.items())
        )
        await cur.execute(queries.UPSERT_DEVICES, columns(devices, 7))
        if rows.hellos:
            await cur.execute(queries.HELLOS, columns(rows.hellos.values(), 7))
        if rows.presences:
            await cur.execute(queries.PRESENCES, columns(rows.presences.values(), 5))
        if rows.events:
            await copy_rows(cur, queries.COPY_EVENTS, rows.events)
        if rows.health:
            await copy_rows(cur, queries.COPY_HEALTH, rows.health)
        await cur.execute(
            queries.UPSERT_DAILY,
            columns(
                ((d, day, *v.counts()) for (d, day), v in sorted(rows.days.items())),
                12,
            ),
        )
        first_of_day = [(device, day) for device, day, inserted in await cur.fetchall() if inserted]
        if rows.clocks:
            await cur.execute(queries.UPSERT_CLOCKS, columns(rows.clocks.values(), 6))
        if rows.cells:
            cells = columns(((d, cell, *entry) for (d, cell), entry in sorted(rows.cells.items())), 6)
            await cur.execute(queries.UPSERT_CELLS, [policy.cell_learning_days * 86400, *cells])
        made = await tracker.apply(cur, rows.observations, clean_reports=policy.clean_reports_to_verify)
        # Power-on: a device seen on a new local day, counted once its state is applied.
        held = await rollups.clock(cur)
        if held is not None:
            started = {t.device_id for t in made if spans.starts_span(t.previous, t.state)}
            await spans.count_seen(cur, first_of_day, held, started)
        return made
