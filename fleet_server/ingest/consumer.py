"""MQTT → validated → batched into PostgreSQL.

Every uplink message (hello, health, event, presence) is validated against its v1 model by the
link's router; a bad one is logged with its topic, acknowledged and dropped, and the ingest goes on. Good ones wait
in a bounded queue; a writer flushes them in one transaction per batch (COPY for the append-only
tables, one set-based upsert per table for the rest).

Nothing acknowledged is lost. With `ack_after_commit` (the default on an external broker) a
message is acknowledged to the broker only after the transaction holding it commits, and the
link asks the broker (MQTT 5 Receive Maximum) for no more unacknowledged messages than the queue
holds. When the database is away the writer keeps its batch and retries with backoff, nothing is
acknowledged, the broker stops sending once the window is full and keeps the rest in the
persistent session; a crash before the commit means the broker sends those messages again. The
broker must be allowed to queue that much: see `deploy/mosquitto.conf`. Delivery is therefore at
least once: after a reconnect mid-batch a few messages can be stored twice.

The embedded amqtt broker gives up on a QoS 1 message whose PUBACK takes more than 5 s (and
drops it), so there the ingest acknowledges on receipt and relies on its in-memory queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import UP_MODELS, Event, Health, Hello, Message, Presence
from fleet_server.db.batch import columns, copy_rows
from fleet_server.devices import tracker
from fleet_server.devices.states import Signal
from fleet_server.devices.tracker import Observation
from mqtt_link.backoff import Backoff
from mqtt_link.link import Link, Receipt, Session
from mqtt_link.routing import Inbound, Router, RouteStats
from mqtt_link.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

INGESTED_KINDS = (topics.Up.HELLO, topics.Up.HEALTH, topics.Up.EVENT, topics.Up.PRESENCE)


@dataclass(frozen=True, slots=True)
class Received:
    received_at: datetime
    message: Message
    receipt: Receipt | None = None


@dataclass(slots=True)
class IngestStats:
    inbound: RouteStats = field(default_factory=RouteStats)  # received and rejected, by the router
    written: int = 0
    batches: int = 0
    write_failures: int = 0
    # Stored, but the connection that brought them had gone before the acknowledgement: the
    # broker sends them again and they are stored twice.
    acks_void: int = 0

    @property
    def received(self) -> int:
        return self.inbound.received

    @property
    def rejected(self) -> int:
        return self.inbound.rejected


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Ingest:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        endpoint: BrokerEndpoint,
        *,
        client_id: str,
        batch_size: int = 500,
        flush_s: float = 0.2,
        queue_size: int = 20_000,
        policy: IngestPolicy | None = None,
        ack_after_commit: bool = True,
        share_group: str | None = None,
    ) -> None:
        self._pool = pool
        self.ack_after_commit = ack_after_commit
        self._policy = policy or IngestPolicy()
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=queue_size)
        self.router = Router("ingest", topics.Direction.UP)
        for kind in INGESTED_KINDS:
            self.router.route(kind, UP_MODELS[kind], self._take)
        self.stats = IngestStats(self.router.stats)
        self._writer: asyncio.Task[None] | None = None
        self._link = Link(
            endpoint,
            client_id=client_id,
            subscriptions=[topics.shared(topics.fleet_uplink_filter(kind), share_group) for kind in INGESTED_KINDS],
            on_message=self.router.deliver,
            manual_ack=ack_after_commit,
            # MQTT 5 lets us cap what is in flight to us unacknowledged at what the queue holds.
            session=Session(mqtt_version="5", receive_maximum=min(queue_size, 65_535)) if ack_after_commit else None,
        )

    async def __aenter__(self) -> Self:
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")
        await self._link.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._link.close()
        # Give what is already queued a moment to reach the database before stopping.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=5.0)
        if self._writer is not None:
            await cancel_and_wait(self._writer)

    async def wait_connected(self, timeout_s: float) -> None:
        await self._link.wait_connected(timeout_s)

    async def _take(self, inbound: Inbound[Message]) -> None:
        # Blocks when the queue is full: back-pressure onto the broker, never a drop.
        await self._queue.put(Received(datetime.now(tz=UTC), inbound.message, inbound.delivery.receipt))

    async def _next_batch(self) -> list[Received]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self._flush_s
        while len(batch) < self._batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        return batch

    async def _write_loop(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            batch = await self._next_batch()
            while True:
                try:
                    await write_batch(self._pool, batch, self._policy)
                    break
                except psycopg.Error as exc:
                    self.stats.write_failures += 1
                    delay = backoff.next_delay()
                    log.warning(
                        "ingest write failed; batch kept for retry",
                        rows=len(batch),
                        error=str(exc),
                        retry_in_s=round(delay, 2),
                    )
                    await asyncio.sleep(delay)
            backoff.reset()
            for item in batch:
                if item.receipt is not None and not item.receipt.ack():
                    self.stats.acks_void += 1
            self.stats.written += len(batch)
            self.stats.batches += 1
            for _ in batch:
                self._queue.task_done()


# Fault events of these parts put a device out of service; others (printer paper, battery) are
# counted for the detectors but a speaker with an empty printer still announces payments.
CRITICAL_PARTS = frozenset({"audio", "tts", "modem", "storage"})


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
    if isinstance(msg, Event) and msg.kind == "fault" and msg.detail.get("part") in CRITICAL_PARTS:
        detail = {k: v for k, v in msg.detail.items() if k in ("part", "state", "was")}
        return [Observation(msg.device_id, at, Signal.FAULT, f"fault_{msg.detail.get('part')}", detail)]
    return [Observation(msg.device_id, at, Signal.SEEN, type(msg).__name__.lower())]


@dataclass(slots=True)
class _Day:
    messages: int = 0
    health_reports: int = 0
    fault_events: int = 0
    audio_failures: int = 0
    reconnects: int = 0
    min_rssi_dbm: int | None = None
    first_at: datetime | None = None
    last_at: datetime | None = None

    def counts(self) -> tuple[object, ...]:
        """The rollup columns after (device_id, day), in table order."""
        return (
            self.messages,
            self.health_reports,
            self.fault_events,
            self.audio_failures,
            self.reconnects,
            self.min_rssi_dbm,
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
        elif isinstance(msg, Event):
            self.fault_events += msg.kind == "fault"
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
            self.presences[msg.device_id] = (msg.online, msg.reason, at, msg.device_id)
        elif isinstance(msg, Event):
            self.events.append((msg.device_id, _at(msg.ts), at, msg.kind, json.dumps(msg.detail)))
        elif isinstance(msg, Health):
            self._add_health(msg, at)

    def _add_health(self, msg: Health, at: datetime) -> None:
        self.health.append(
            (
                msg.device_id,
                _at(msg.ts),
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


# Each table gets one statement per batch whatever the batch's size: the rows go in as arrays
# through unnest() (upserts) or COPY (append-only tables). Device rows are touched in device id
# order so that ingest processes sharing the stream lock them in the same order and never deadlock.
_UPSERT_DEVICES = """
INSERT INTO devices (device_id, first_contact, last_seen, last_cell, last_gps_lat, last_gps_lon)
SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[], %s::float8[], %s::float8[])
ORDER BY 1
ON CONFLICT (device_id) DO UPDATE SET last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen),
    first_contact = LEAST(devices.first_contact, EXCLUDED.first_contact),
    last_cell = COALESCE(EXCLUDED.last_cell, devices.last_cell),
    last_gps_lat = COALESCE(EXCLUDED.last_gps_lat, devices.last_gps_lat),
    last_gps_lon = COALESCE(EXCLUDED.last_gps_lon, devices.last_gps_lon)
"""
_HELLOS = """
UPDATE devices d SET reported_serial = h.serial, model = h.model, firmware = h.firmware, boot_id = h.boot_id,
    slot = h.slot, hello_at = h.at
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[])
    AS h(serial, model, firmware, boot_id, slot, at, device_id)
WHERE d.device_id = h.device_id
"""
# Ordered by arrival at the server: a last will carries the time its device connected, so the
# device's own clock cannot order it against the "online" that followed.
_PRESENCES = """
UPDATE devices d SET online = p.online, presence_reason = p.reason, presence_at = p.at
FROM unnest(%s::boolean[], %s::text[], %s::timestamptz[], %s::text[]) AS p(online, reason, at, device_id)
WHERE d.device_id = p.device_id AND (d.presence_at IS NULL OR d.presence_at <= p.at)
"""
_COPY_EVENTS = "COPY device_events (device_id, ts, received_at, kind, detail) FROM STDIN"
_COPY_HEALTH = (
    "COPY device_health (device_id, ts, received_at, uptime_s, rssi_dbm, volume,"
    " queue_depth, played_total, mem_rss_kb, payload) FROM STDIN"
)
_UPSERT_DAILY = """
INSERT INTO device_daily AS t (device_id, day, messages, health_reports, fault_events, audio_failures,
    reconnects, min_rssi_dbm, first_at, last_at)
SELECT * FROM unnest(%s::text[], %s::date[], %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int8[],
    %s::int2[], %s::timestamptz[], %s::timestamptz[])
ON CONFLICT (device_id, day) DO UPDATE SET messages = t.messages + EXCLUDED.messages,
    health_reports = t.health_reports + EXCLUDED.health_reports,
    fault_events = t.fault_events + EXCLUDED.fault_events,
    audio_failures = t.audio_failures + EXCLUDED.audio_failures,
    reconnects = t.reconnects + EXCLUDED.reconnects,
    min_rssi_dbm = LEAST(t.min_rssi_dbm, EXCLUDED.min_rssi_dbm),
    first_at = LEAST(t.first_at, EXCLUDED.first_at), last_at = GREATEST(t.last_at, EXCLUDED.last_at)
"""
_UPSERT_CELLS = """
INSERT INTO device_cells AS t (device_id, cell, area, first_seen, last_seen, reports, learned)
SELECT c.device_id, c.cell, c.area, c.first_seen, c.last_seen, c.reports,
    c.first_seen <= GREATEST(d.installed_at, d.first_contact) + make_interval(secs => %s)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::int8[])
    AS c(device_id, cell, area, first_seen, last_seen, reports)
JOIN devices d USING (device_id)
ON CONFLICT (device_id, cell) DO UPDATE SET last_seen = GREATEST(t.last_seen, EXCLUDED.last_seen),
    reports = t.reports + EXCLUDED.reports, learned = t.learned OR EXCLUDED.learned
"""


async def write_batch(
    pool: AsyncConnectionPool, batch: list[Received], policy: IngestPolicy | None = None
) -> list[tracker.Transition]:
    """Write one batch in one transaction: telemetry, the daily rollup, cells and device states."""
    policy = policy or IngestPolicy()
    rows = _Rows(policy)
    for item in batch:
        rows.add(item)
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        no_position = (None, None, None)
        devices = (
            (d, rows.first[d], last, *rows.positions.get(d, no_position)) for d, last in sorted(rows.seen.items())
        )
        await cur.execute(_UPSERT_DEVICES, columns(devices, 6))
        if rows.hellos:
            await cur.execute(_HELLOS, columns(rows.hellos.values(), 7))
        if rows.presences:
            await cur.execute(_PRESENCES, columns(rows.presences.values(), 4))
        if rows.events:
            await copy_rows(cur, _COPY_EVENTS, rows.events)
        if rows.health:
            await copy_rows(cur, _COPY_HEALTH, rows.health)
        await cur.execute(
            _UPSERT_DAILY,
            columns(
                ((d, day, *v.counts()) for (d, day), v in sorted(rows.days.items())),
                10,
            ),
        )
        if rows.cells:
            cells = columns(((d, cell, *entry) for (d, cell), entry in sorted(rows.cells.items())), 6)
            await cur.execute(_UPSERT_CELLS, [policy.cell_learning_days * 86400, *cells])
        return await tracker.apply(cur, rows.observations, clean_reports=policy.clean_reports_to_verify)
