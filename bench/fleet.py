"""Fleet-server benchmarks on Mosquitto and the machine's PostgreSQL.

`ingest`: health reports from `devices` simulated devices published flat out (QoS 1, pipelined)
by a few publisher connections, in a process of their own, into the real ingest (validation,
batching, COPY, daily rollup, cells, state machine, acknowledgement after commit). The broker is
a private Mosquitto started with the queue limits of deploy/mosquitto.conf (the machine's own
runs at Mosquitto's defaults, which drop a session's messages past 1000 queued). Figures: the
offered rate (publishing), the sustained ingest rate = rows stored / time from the first publish
to the last row written, and the loss (published - stored). The ceiling on the same run: the
same rows COPYed straight into `device_health` by one connection.

`query`: a simulated history of `devices` x `days` (simulators.history) loaded into a fresh
database, then the fleet summary (every figure over the whole window) and a per-model slice,
each timed over `repeats` runs.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiomqtt
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import CellReport, Health
from fleet_server.db import migrate, open_pool
from fleet_server.figures import FleetFigures, Level
from fleet_server.ingest import Ingest
from simulators.history import FleetHistory, HistoryParameters
from simulators.mosquitto import MosquittoError, PrivateMosquitto

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto.conf"
PIPELINE = 100


class BenchError(Exception):
    """A benchmark cannot run on this machine (a missing service or tool)."""


@asynccontextmanager
async def fresh_database(admin_url: str = ADMIN_URL) -> AsyncIterator[str]:
    name = f"haodian_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@asynccontextmanager
async def private_mosquitto(config: Path = DEPLOY_CONF) -> AsyncIterator[tuple[int, str]]:
    """A Mosquitto on a free local port with the queue and in-flight limits of `config`;
    yields (port, the limits applied)."""
    text = await asyncio.to_thread(config.read_text, encoding="utf-8")
    limits = [line.strip() for line in text.splitlines() if line.startswith("max_")]
    with tempfile.TemporaryDirectory(prefix="haodian-bench-mqtt-") as folder:
        try:
            broker = PrivateMosquitto(Path(folder), config_lines=limits, persistence=False)
            await asyncio.to_thread(broker.start)
        except MosquittoError as exc:
            raise BenchError(str(exc)) from exc
        try:
            yield broker.port, ", ".join(limits)
        finally:
            await asyncio.to_thread(broker.stop)


@dataclass(frozen=True, slots=True)
class IngestFigures:
    devices: int
    broker: str
    published: int
    stored: int
    lost: int
    stored_twice: int
    publish_s: float
    end_to_end_s: float
    offered_per_s: float
    sustained_per_s: float
    raw_copy_per_s: float
    batches: int
    ingest_cpu_us_per_report: float

    def lines(self) -> list[str]:
        return [
            f"broker: {self.broker}",
            f"devices {self.devices:,}, health reports published {self.published:,}, stored {self.stored:,},"
            f" lost {self.lost:,} (delivered twice after a reconnect: {self.stored_twice})",
            f"offered: published in {self.publish_s:.1f} s = {self.offered_per_s:,.0f} reports/s;"
            f" last row stored after {self.end_to_end_s:.1f} s, in {self.batches:,} batches",
            f"ingest sustained: {self.sustained_per_s:,.0f} health reports/s into PostgreSQL"
            f" (zero loss: {self.lost == 0})",
            f"ingest process CPU: {self.ingest_cpu_us_per_report:,.0f} us per report"
            f" (= {1e6 / self.ingest_cpu_us_per_report:,.0f} reports/s on a core of its own)",
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


async def _publish(port: int, name: str, device_ids: list[str], reports: int) -> None:
    # QoS 1 publishes in windows of PIPELINE: a publisher that waited for each PUBACK would
    # measure the round trip, not the ingest. aiomqtt warns about every publish past ten in
    # flight; here that is the point, so its logger stays quiet.
    quiet = logging.getLogger("bench.publisher")
    quiet.setLevel(logging.ERROR)
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=name, max_inflight_messages=PIPELINE, logger=quiet
    ) as client:
        for n in range(reports):
            for at in range(0, len(device_ids), PIPELINE):
                window = device_ids[at : at + PIPELINE]
                await asyncio.gather(
                    *(client.publish(topics.up(d, topics.Up.HEALTH), _report(d, n), qos=1) for d in window)
                )


def _publisher_process(port: int, tag: str, device_ids: list[str], reports: int, connections: int) -> None:
    """The simulated devices, in a process of their own so that the ingest's is measured alone."""

    async def publish_all() -> None:
        await asyncio.gather(
            *(
                _publish(port, f"bench-pub-{tag}-{i}", device_ids[i::connections], reports)
                for i in range(connections)
                if device_ids[i::connections]
            )
        )

    asyncio.run(publish_all())


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


async def measure_ingest(*, devices: int, reports_per_device: int, publishers: int = 4) -> IngestFigures:
    tag = uuid.uuid4().hex[:6]
    ids = [f"B{tag}{i:06d}" for i in range(devices)]
    expected = devices * reports_per_device
    async with private_mosquitto() as (port, limits), fresh_database() as url, open_pool(url, max_size=4) as pool:
        await migrate(pool)
        endpoint = BrokerEndpoint(host="127.0.0.1", port=port)
        async with Ingest(pool, endpoint, client_id=f"bench-ingest-{tag}", batch_size=2000, flush_s=0.1) as ingest:
            await ingest.wait_connected(10)
            publisher = multiprocessing.get_context("spawn").Process(
                target=_publisher_process, args=(port, tag, ids, reports_per_device, publishers), name="publisher"
            )
            started, cpu_started = time.perf_counter(), time.process_time()
            publisher.start()
            await asyncio.to_thread(publisher.join)
            published_s = time.perf_counter() - started
            if publisher.exitcode != 0:
                raise BenchError(f"the publisher process failed (exit code {publisher.exitcode})")
            print(f"published {expected:,} in {published_s:.1f} s; waiting for the ingest", flush=True)
            last_written, last_change = ingest.stats.written, time.perf_counter()
            # Done when everything is stored, or nothing more arrived for 15 s (the rest is lost).
            while ingest.stats.written < expected and time.perf_counter() - last_change < 15:
                await asyncio.sleep(0.02)
                if ingest.stats.written != last_written:
                    last_written, last_change = ingest.stats.written, time.perf_counter()
            end_to_end = last_change - started
            cpu_s = time.process_time() - cpu_started
            stats = ingest.stats
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*), count(DISTINCT (device_id, ts)) FROM device_health")
            stored_rows, stored = (await cur.fetchone()) or (0, 0)
        raw_copy = await _raw_copy_rate(pool)
    return IngestFigures(
        devices=devices,
        broker=f"private Mosquitto with deploy/mosquitto.conf limits ({limits})",
        published=expected,
        stored=stored,
        lost=expected - stored,
        stored_twice=stored_rows - stored,
        publish_s=published_s,
        end_to_end_s=end_to_end,
        offered_per_s=expected / published_s,
        sustained_per_s=stored / end_to_end,
        raw_copy_per_s=raw_copy,
        batches=stats.batches,
        ingest_cpu_us_per_report=cpu_s / max(stored, 1) * 1e6,
    )


@dataclass(frozen=True, slots=True)
class QueryFigures:
    devices: int
    days: int
    transitions: int
    load_s: float
    summary_s: list[float]
    by_model_s: list[float]

    def lines(self) -> list[str]:
        return [
            f"history: {self.devices:,} devices x {self.days} days, {self.transitions:,} state transitions,"
            f" {self.devices * self.days:,} daily rollup rows; generated and loaded in {self.load_s:.0f} s",
            "fleet summary (every figure, whole window): "
            + ", ".join(f"{s * 1000:,.0f} ms" for s in self.summary_s)
            + f" (best {min(self.summary_s) * 1000:,.0f} ms)",
            "figures by model: "
            + ", ".join(f"{s * 1000:,.0f} ms" for s in self.by_model_s)
            + f" (best {min(self.by_model_s) * 1000:,.0f} ms)",
        ]


async def measure_query(*, devices: int, days: int, repeats: int = 3) -> QueryFigures:
    start = datetime(2026, 10, 1, tzinfo=timezone(timedelta(hours=8))).astimezone(UTC)
    started = time.perf_counter()
    history = FleetHistory.generate(HistoryParameters(devices=devices, days=days, seed=3), start)
    async with fresh_database() as url, open_pool(url, max_size=2) as pool:
        await migrate(pool)
        await history.load(pool)
        async with pool.connection() as conn:
            await conn.execute("ANALYZE")
        load_s = time.perf_counter() - started
        figures = FleetFigures(pool)
        summary, by_model = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            await figures.compute(history.start, history.end)
            summary.append(time.perf_counter() - t)
            t = time.perf_counter()
            await figures.compute(history.start, history.end, group_by=Level.MODEL)
            by_model.append(time.perf_counter() - t)
    return QueryFigures(devices, days, len(history.transitions), load_s, summary, by_model)
