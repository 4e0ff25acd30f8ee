"""Fleet-server benchmarks: `ingest` and `query`.

`ingest`: health reports from `devices` simulated devices, published (QoS 1, pipelined) by a few
connections in a process of their own, either at the devices' real report interval (each device
once every `interval_s`, spread evenly) or flat out (`interval_s` 0), into the real ingest
(validation, batching, COPY, daily rollup, cells, state machine, acknowledgement after commit)
running as `haodian server --parts ingest`, with `--workers N` for several processes sharing the
stream (`$share/...`). Figures: the offered rate; the most reports waiting at once (published
but not yet stored); the sustained rate = rows stored / time from the first publish to the last
row stored; the loss (published - stored); the ingest processes' CPU per report, and from it how
many devices one process could hold. The ceiling on the same run: the same rows COPYed straight
into `device_health` by one connection.

`query`: a simulated history of `devices` x `days` up to today (simulators.history) in a
hierarchy of 500 stores, loaded into a fresh database, the figure rollups built from it; then
the dashboard's queries (30-day summary, by district, the 30-day trend, the hour-exact 24 hours,
a device's card) timed over `repeats` runs (20 at least), and the raw computation of the
30-day summary and by district once, on the same data.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import aiomqtt
import uvloop
from psycopg_pool import AsyncConnectionPool

from bench import payments
from bench.env import BenchError, BrokerKind, DatabaseKind, broker, database
from bench.stats import process_tree_cpu_s
from firmware_protocols import topics
from firmware_protocols.messages import CellReport, Health
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.devices import rollup_queries, rollups
from fleet_server.figures.figures import FleetFigures, Level
from simulators.history import FleetHistory, HistoryParameters
from simulators.netproxy import free_port

PIPELINE = 100
PUBLISHERS = 4


@dataclass(frozen=True, slots=True)
class IngestFigures:
    devices: int
    ingesters: int
    interval_s: float
    broker: str
    database: str
    published: int
    stored: int
    lost: int
    stored_twice: int
    publish_s: float
    end_to_end_s: float
    offered_per_s: float
    sustained_per_s: float
    max_backlog: int
    drain_s: float
    raw_copy_per_s: float
    ingest_cpu_us_per_report: float

    @property
    def devices_per_process(self) -> float:
        """Devices at this interval (60 s if flat out) that one ingest process could hold on a
        core of its own, from its CPU per report."""
        return 1e6 / self.ingest_cpu_us_per_report * (self.interval_s or 60.0)

    def lines(self) -> list[str]:
        pace = f"every {self.interval_s:.0f} s" if self.interval_s else "flat out"
        return [
            f"broker: {self.broker}",
            f"database: {self.database}",
            f"devices {self.devices:,} reporting {pace}; ingest processes {self.ingesters}",
            f"health reports published {self.published:,}, stored {self.stored:,}, lost {self.lost:,}"
            f" (stored twice after a reconnect: {self.stored_twice})",
            f"offered: {self.offered_per_s:,.0f} reports/s for {self.publish_s:.1f} s;"
            f" most waiting in the broker at once: {self.max_backlog:,}; last row stored {self.drain_s:.1f} s"
            " after the last publish",
            f"ingest sustained: {self.sustained_per_s:,.0f} reports/s into PostgreSQL (zero loss: {self.lost == 0})",
            f"ingest CPU: {self.ingest_cpu_us_per_report:,.0f} us per report (all ingest processes) ="
            f" {1e6 / self.ingest_cpu_us_per_report:,.0f} reports/s per core ="
            f" {self.devices_per_process:,.0f} devices per ingest process at one report per"
            f" {self.interval_s or 60:.0f} s",
            f"ceiling, raw COPY of the same rows by one connection: {self.raw_copy_per_s:,.0f} rows/s"
            f" (ingest is {self.sustained_per_s / self.raw_copy_per_s:.0%} of it)",
        ]


def _report(device_id: str, n: int) -> bytes:
    return (
        Health(
            device_id=device_id,
            ts=1_790_000_000_000 + n * 60_000,
            uptime_s=n * 60,
            rssi_dbm=-75,
            volume=6,
            queue_depth=0,
            played_total=n,
            cell=CellReport(rat="LTE", mcc=460, mnc=0, area="1A2B", cell_id=f"{n % 3:X}"),
            audio_selftest="pass",
        )
        .model_dump_json()
        .encode()
    )


async def _publish(
    port: int, name: str, device_ids: list[str], reports: int, interval_s: float, published: Synchronized[int]
) -> None:
    # QoS 1 publishes in windows of PIPELINE: a publisher that waited for each PUBACK would
    # measure the round trip, not the ingest. Paced: report n of device k is due at
    # n * interval + k / len * interval, as a fleet whose devices started at random moments.
    quiet = logging.getLogger("bench.publisher")
    quiet.setLevel(logging.ERROR)
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=name, username=name, max_inflight_messages=PIPELINE, logger=quiet
    ) as client:
        client.pending_calls_threshold = 1 << 30
        started = time.perf_counter()
        for n in range(reports):
            for at in range(0, len(device_ids), PIPELINE):
                if interval_s:
                    delay = started + (n + at / len(device_ids)) * interval_s - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                window = device_ids[at : at + PIPELINE]
                await asyncio.gather(
                    *(client.publish(topics.up(d, topics.Up.HEALTH), _report(d, n), qos=1) for d in window)
                )
                with published.get_lock():
                    published.value += len(window)


def _publisher_process(
    port: int, tag: str, device_ids: list[str], reports: int, interval_s: float, published: Synchronized[int]
) -> None:
    """The simulated devices, in a process of their own so that the ingest's is measured alone."""
    connections = max(1, min(PUBLISHERS, len(device_ids)))

    async def publish_all() -> None:
        await asyncio.gather(
            *(
                _publish(port, f"bench-pub-{tag}-{i}", device_ids[i::connections], reports, interval_s, published)
                for i in range(connections)
            )
        )

    uvloop.run(publish_all())


async def _raw_copy_rate(pool: AsyncConnectionPool) -> float:
    async with pool.connection() as conn:
        async with conn.cursor() as out_cur, out_cur.copy("COPY (SELECT * FROM device_health) TO STDOUT") as out:
            blocks = [bytes(block) async for block in out]
        await conn.execute("TRUNCATE device_health")
        started = time.perf_counter()
        async with conn.cursor() as cur, cur.copy("COPY device_health FROM STDIN") as copy:
            for block in blocks:
                await copy.write(block)
        elapsed = time.perf_counter() - started
        cur = await conn.execute("SELECT count(*) FROM device_health")
        rows = int((await cur.fetchone() or (0,))[0])
    return rows / elapsed if elapsed else 0.0


async def _stored(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM device_health")
        return int((await cur.fetchone() or (0,))[0])


async def measure_ingest(
    *,
    devices: int,
    reports_per_device: int,
    interval_s: float = 0.0,
    ingesters: int = 1,
    broker_kind: BrokerKind = "private",
    database_kind: DatabaseKind = "machine",
) -> IngestFigures:
    tag = uuid.uuid4().hex[:6]
    ids = [f"B{tag}{i:06d}" for i in range(devices)]
    expected = devices * reports_per_device
    async with broker(broker_kind) as mqtt, database(database_kind) as db, open_pool(db.url, max_size=2) as pool:
        if ingesters > 1 and not mqtt.shared_subscriptions:
            raise BenchError("several ingest processes need shared subscriptions, which the embedded broker lacks")
        await migrate(pool)
        # The figure rollups built, as the fleet server's inspector builds them on its first
        # round: the state tracker keeps them in every ingest transaction from then on.
        await rollups.rebuild(pool, datetime.now(tz=UTC), fleet_offset_min=480)
        with tempfile.TemporaryDirectory(prefix="haodian-bench-ingest-") as folder:
            env = {
                **os.environ,
                "HAODIAN_MQTT_URL": mqtt.url,
                "HAODIAN_DATABASE_URL": db.url,
                "HAODIAN_DATA_DIR": folder,
                "HAODIAN_MQTT_CLIENT_PREFIX": f"bench-{tag}",
                "HAODIAN_INGEST_BATCH_SIZE": "2000",
                "HAODIAN_INGEST_FLUSH_S": "0.1",
                # amqtt drops a QoS 1 message whose acknowledgement takes over 5 s (see ingest.py).
                "HAODIAN_INGEST_ACK_AFTER_COMMIT": "false" if mqtt.kind == "embedded" else "true",
            }
            command = [sys.executable, "-m", "haodian", "--log-level", "WARNING", "server", "--parts", "ingest"]
            command += ["--port", str(free_port())] + (["--workers", str(ingesters)] if ingesters > 1 else [])
            server = await asyncio.create_subprocess_exec(
                *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=(Path(folder) / "ingest.log").open("wb")
            )
            try:
                await _wait_subscribed(mqtt.port, tag, pool, ingesters)
                cpu_before = process_tree_cpu_s(server.pid)
                figures = await _drive(pool, mqtt.port, tag, ids, reports_per_device, interval_s)
                cpu_s = process_tree_cpu_s(server.pid) - cpu_before
            finally:
                server.terminate()
                await server.wait()
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*), count(DISTINCT (device_id, ts)) FROM device_health")
            stored_rows, stored = (await cur.fetchone()) or (0, 0)
        raw_copy = await _raw_copy_rate(pool)
    publish_s, end_to_end, max_backlog = figures
    return IngestFigures(
        devices=devices,
        ingesters=ingesters,
        interval_s=interval_s,
        broker=mqtt.description,
        database=db.description,
        published=expected,
        stored=stored,
        lost=expected - stored,
        stored_twice=stored_rows - stored,
        publish_s=publish_s,
        end_to_end_s=end_to_end,
        offered_per_s=expected / publish_s,
        sustained_per_s=stored / end_to_end,
        max_backlog=max_backlog,
        drain_s=max(0.0, end_to_end - publish_s),
        raw_copy_per_s=raw_copy,
        ingest_cpu_us_per_report=cpu_s / max(stored, 1) * 1e6,
    )


async def _wait_subscribed(port: int, tag: str, pool: AsyncConnectionPool, ingesters: int) -> None:
    """Until the ingest processes take messages: one probe report per process's worth of tries."""
    probe = f"B{tag}PROBE"
    deadline = time.monotonic() + 90
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-probe-{tag}", username=f"bench-probe-{tag}") as c:
        n = 0
        while time.monotonic() < deadline:
            await c.publish(topics.up(probe, topics.Up.HEALTH), _report(probe, n), qos=1)
            n += 1
            await asyncio.sleep(0.5)
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM device_health WHERE device_id = %s", (probe,))
                if int((await cur.fetchone() or (0,))[0]) >= ingesters:
                    break
        else:
            raise BenchError("the ingest process(es) did not start taking reports; see ingest.log")
    await asyncio.sleep(1.0)
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM device_health WHERE device_id = %s", (probe,))


async def _drive(
    pool: AsyncConnectionPool, port: int, tag: str, ids: list[str], reports: int, interval_s: float
) -> tuple[float, float, int]:
    """Publish from a process of its own while watching the database; (publishing seconds,
    seconds to the last row stored, most reports waiting at once)."""
    expected = len(ids) * reports
    ctx = multiprocessing.get_context("spawn")
    published = ctx.Value("q", 0)
    publisher = ctx.Process(
        target=_publisher_process, args=(port, tag, ids, reports, interval_s, published), name="publisher"
    )
    started = time.perf_counter()
    publisher.start()
    max_backlog, stored, published_s = 0, 0, 0.0
    last_change, last_stored = time.perf_counter(), 0
    pace = f" at {len(ids) / interval_s:,.0f}/s" if interval_s else " flat out"
    print(f"publishing {expected:,} health reports{pace}", flush=True)
    next_progress = started + 10
    while True:
        await asyncio.sleep(0.25)
        stored = await _stored(pool)
        now = time.perf_counter()
        max_backlog = max(max_backlog, published.value - stored)
        if stored != last_stored:
            last_stored, last_change = stored, now
        if not publisher.is_alive() and not published_s:
            published_s = now - started
            if publisher.exitcode != 0:
                raise BenchError(f"the publisher process failed (exit code {publisher.exitcode})")
        if now >= next_progress:
            print(f"  {now - started:5.0f} s: published {published.value:,}, stored {stored:,}", flush=True)
            next_progress += 10
        # Done when everything is stored, or nothing more arrived for 15 s (the rest is lost).
        if published_s and (stored >= expected or now - last_change > 15):
            break
    return published_s, last_change - started, max_backlog


@dataclass(frozen=True, slots=True)
class QueryFigures:
    database: str
    devices: int
    days: int
    stores: int
    transitions: int
    load_s: float
    rollup_build_s: float
    checkpoint_s: float
    timings_ms: dict[str, list[float]]
    raw_summary_ms: float
    raw_by_district_ms: float
    ceiling_scan_ms: float
    payments: int
    deliveries: int
    per_day: float
    raw_days: int
    raw_24h_ms: float

    def lines(self) -> list[str]:
        out = [
            f"database: {self.database}",
            f"history: {self.devices:,} devices in {self.stores:,} stores x {self.days} days up to now,"
            f" {self.transitions:,} state transitions, {self.devices * self.days:,} daily rows;"
            f" generated and loaded in {self.load_s:.0f} s; rollups built from it in {self.rollup_build_s:.1f} s",
            f"payments: {self.per_day:g} a day per merchant over a shop's day; {self.payments:,} payments and"
            f" {self.deliveries:,} deliveries raw over the last {self.raw_days} local days, the older days'"
            " delivery rollup rows copied from the first whole one (bench/payments.py says why)",
            f"the hourly checkpoint (every device's open piece into the rows, under the rollup lock):"
            f" {self.checkpoint_s:.2f} s",
        ]
        for name, runs in self.timings_ms.items():
            ordered = sorted(runs)
            p50 = ordered[len(ordered) // 2]
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            out.append(f"{name}: p50 {p50:,.1f} ms, p95 {p95:,.1f} ms, max {ordered[-1]:,.1f} ms ({len(runs)} runs)")
        out += [
            f"raw history, the same 30-day fleet summary: {self.raw_summary_ms:,.0f} ms;"
            f" by district {self.raw_by_district_ms:,.0f} ms; the 24-hour summary {self.raw_24h_ms:,.0f} ms",
            f"ceiling, reading every row the raw figures read once (count(*) of device_states, device_daily,"
            f" devices, payments, deliveries): {self.ceiling_scan_ms:,.0f} ms",
        ]
        return out


# The bench fleet's hierarchy: 5 cities x 10 districts x 10 stores, a merchant per device
# (business hours 08:00-22:00, one in ten 10:00-02:00), three models, two firmware versions.
_HIERARCHY = """
INSERT INTO cities SELECT 'C' || c, 'city ' || c FROM generate_series(1, 5) c;
INSERT INTO districts SELECT 'D' || d, 'C' || (1 + d % 5), 'district ' || d FROM generate_series(1, 50) d;
INSERT INTO stores (store_id, district_id, name) SELECT 'S' || s, 'D' || (1 + s % 50), 'store ' || s
    FROM generate_series(1, 500) s;
INSERT INTO merchants (merchant_id, store_id, name, business_open, business_close)
    SELECT 'M' || substr(device_id, 2), 'S' || (1 + abs(hashtext(device_id)) % 500), 'merchant',
           CASE WHEN abs(hashtext(device_id)) % 10 = 0 THEN time '10:00' ELSE time '08:00' END,
           CASE WHEN abs(hashtext(device_id)) % 10 = 0 THEN time '02:00' ELSE time '22:00' END
    FROM devices;
INSERT INTO bindings (device_id, merchant_id) SELECT device_id, 'M' || substr(device_id, 2) FROM devices;
UPDATE devices SET model = (ARRAY['HD-S1', 'HD-S2', 'HD-P1'])[1 + abs(hashtext(device_id || 'm')) % 3],
                   firmware = (ARRAY['1.0.0', '1.1.0'])[1 + abs(hashtext(device_id || 'f')) % 2];
"""


async def _timed(runs: list[float], call: Any) -> Any:
    t = time.perf_counter()
    answer = await call
    runs.append((time.perf_counter() - t) * 1000)
    return answer


async def _checkpoint_cost(pool: AsyncConnectionPool) -> float:
    """The time of the next hour's checkpoint statements, run and rolled back (a real one would
    wait for the hour)."""
    async with pool.connection() as conn, conn.cursor() as cur:
        held = await rollups.clock(cur)
        if held is None:
            raise BenchError("the rollups were not built")
        params = {"c": held.checkpoint, "h": held.checkpoint + 3600, "hours_from": held.hours_from, "fleet_offset": 480}
        t = time.perf_counter()
        async with conn.transaction(force_rollback=True):
            await cur.execute(rollups.FOR_BULK)
            for statement in (rollup_queries.CHECKPOINT_HOURS, rollup_queries.CHECKPOINT_DAYS):
                await cur.execute(statement, params)
            await cur.execute(rollup_queries.CLEAR[2])
            await cur.execute(rollup_queries.REOPEN, params)
        return time.perf_counter() - t


async def _raw_beside(figures: FleetFigures, window: tuple[datetime, datetime]) -> tuple[float, float]:
    """The raw computation of the same 30-day summary and by district, timed once, and the
    rollups' answer checked against it."""
    rolled = await figures.compute_rolled(*window)
    if rolled is None:
        raise BenchError("the rollups did not answer the 30-day summary")
    print("timing the raw computation of the same summary once", flush=True)
    t = time.perf_counter()
    [raw] = await figures.compute_raw(*window)
    raw_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    await figures.compute_raw(*window, group_by=Level.DISTRICT)
    raw_district_ms = (time.perf_counter() - t) * 1000
    for name in ("deployed_hours", "operating_hours", "failures", "repairs", "seen_days", "deployed_days"):
        a, b = getattr(rolled[0], name), getattr(raw, name)
        if abs(a - b) > 1e-6 * max(1.0, abs(b)):
            raise BenchError(f"rollups and raw history disagree on {name}: {a} / {b}")
    return raw_ms, raw_district_ms


async def _raw_24h_beside(figures: FleetFigures) -> float:
    """The raw computation of the hour-exact 24 hours to now (every delivery in it raw), timed
    once, and the rollups' deliveries checked against it."""
    now = datetime.now(tz=UTC)
    window = (now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23), now)
    rolled = await figures.compute_rolled(*window)
    if rolled is None:
        raise BenchError("the rollups did not answer the 24-hour summary")
    t = time.perf_counter()
    [raw] = await figures.compute_raw(*window)
    raw_ms = (time.perf_counter() - t) * 1000
    for name in ("announcements", "announcements_played", "latency_p50_ms", "latency_p95_ms", "deployed_hours"):
        a, b = getattr(rolled[0], name), getattr(raw, name)
        if a != b and (a is None or b is None or abs(a - b) > 1e-6 * max(1.0, abs(b))):
            raise BenchError(f"rollups and raw history disagree on {name} over 24 hours: {a} / {b}")
    return raw_ms


async def measure_query(  # noqa: PLR0915 - one measurement, step by step
    *,
    devices: int,
    days: int,
    repeats: int = 3,
    per_day: float = 40.0,
    raw_days: int = 2,
    database_kind: DatabaseKind = "machine",
) -> QueryFigures:
    """A history of `days` whole local days up to today with payments (`bench.payments`), then
    the rollups built from it as the inspector builds them, then the dashboard's queries timed
    `repeats` times each (at least 20), and the raw computation once, on the same data."""
    china = timezone(timedelta(hours=8))
    today = datetime.now(tz=china).replace(hour=0, minute=0, second=0, microsecond=0)
    start = (today - timedelta(days=days)).astimezone(UTC)
    started = time.perf_counter()
    history = FleetHistory.generate(HistoryParameters(devices=devices, days=days, seed=3), start)
    repeats = max(repeats, 20)
    async with database(database_kind) as db, open_pool(db.url, max_size=2) as pool:
        await migrate(pool)
        await history.load(pool)
        async with pool.connection() as conn:
            await conn.execute(_HIERARCHY)
        raw_days = min(raw_days, days + 1)
        print(f"generating {raw_days} local days of payments at {per_day:g} a day per merchant", flush=True)
        counts = await payments.generate(
            pool, devices=devices, per_day=per_day, raw_days=raw_days, today=today.astimezone(UTC)
        )
        async with pool.connection() as conn:
            await conn.execute("ANALYZE")
        load_s = time.perf_counter() - started
        print(f"loaded {len(history.transitions):,} transitions in {load_s:.0f} s; building the rollups", flush=True)
        t = time.perf_counter()
        await rollups.rebuild(pool, datetime.now(tz=UTC), fleet_offset_min=480)
        build_s = time.perf_counter() - t
        first_whole = today.astimezone(UTC) - timedelta(days=raw_days - 1)
        if days + 1 > raw_days:
            await payments.copy_older_days(pool, first_whole_day=first_whole, older=days + 1 - raw_days)
        async with pool.connection() as conn:
            await conn.execute("ANALYZE")
        checkpoint_s = await _checkpoint_cost(pool)
        figures = FleetFigures(pool)
        timings: dict[str, list[float]] = {
            name: []
            for name in (
                "fleet summary, 30 local days to now",
                "figures by district, last 30 days",
                "30-day trend by day (30 buckets, one statement)",
                "24-hour summary, hour-exact",
                "a device's card, 30 days",
            )
        }
        names = list(timings)
        device_ids = [f"H{n:06d}" for n in range(1, devices + 1)]
        rng = random.Random(5)  # noqa: S311 - which device's card to ask for
        for _ in range(repeats):
            now = datetime.now(tz=UTC)
            hour = now.replace(minute=0, second=0, microsecond=0)
            local_day = (now.astimezone(china).replace(hour=0, minute=0, second=0, microsecond=0)).astimezone(UTC)
            month = (local_day - timedelta(days=29), now)  # 30 local days, today's so far the last
            await _timed(timings[names[0]], figures.compute(*month))
            await _timed(timings[names[1]], figures.compute(*month, group_by=Level.DISTRICT))
            buckets = [(local_day - timedelta(days=i), local_day - timedelta(days=i - 1)) for i in range(29, 0, -1)]
            await _timed(timings[names[2]], figures.series([*buckets, (local_day, now)]))
            await _timed(timings[names[3]], figures.compute(hour - timedelta(hours=23), now))
            device = rng.choice(device_ids)
            await _timed(timings[names[4]], figures.compute(*month, scope=(Level.DEVICE, device)))
        raw_24h_ms = await _raw_24h_beside(figures)
        month = (month[0], datetime.now(tz=UTC))  # the same window, to now again
        raw_ms, raw_district_ms = await _raw_beside(figures, month)
        async with pool.connection() as conn:
            t = time.perf_counter()
            for table in ("device_states", "device_daily", "devices", "payments", "deliveries"):
                await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - our own table names
            scan_ms = (time.perf_counter() - t) * 1000
    return QueryFigures(
        db.description,
        devices,
        days,
        500,
        len(history.transitions),
        load_s,
        build_s,
        checkpoint_s,
        timings,
        raw_ms,
        raw_district_ms,
        scan_ms,
        *counts,
        per_day,
        raw_days,
        raw_24h_ms,
    )
