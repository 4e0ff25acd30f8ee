"""Fleet-server benchmarks on the machine's Mosquitto and PostgreSQL.

`ingest`: health reports from `devices` simulated devices published flat out (QoS 1) by a few
publisher connections into the real ingest (validation, batching, COPY, daily rollup, cells,
state machine); sustained rate = rows in the database / time from the first publish to the last
row written, and the loss (published - stored). The ceiling on the same run: the same rows
COPYed straight into `device_health` by one connection.

`query`: a simulated history of `devices` x `days` (simulators.history) loaded into a fresh
database, then the fleet summary (every figure over the whole window) and a per-model slice,
each timed over `repeats` runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import aiomqtt
import psycopg
from psycopg import sql

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import CellReport, Health
from fleet_server.db import migrate, open_pool
from fleet_server.figures import FleetFigures, Level
from fleet_server.ingest import Ingest
from simulators.history import FleetHistory, HistoryParameters

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


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


@dataclass(frozen=True, slots=True)
class IngestFigures:
    devices: int
    published: int
    stored: int
    lost: int
    publish_s: float
    end_to_end_s: float
    sustained_per_s: float
    raw_copy_per_s: float

    def lines(self) -> list[str]:
        return [
            f"devices {self.devices}, health reports published {self.published}, stored {self.stored},"
            f" lost {self.lost}",
            f"published in {self.publish_s:.1f} s; all stored after {self.end_to_end_s:.1f} s",
            f"ingest sustained: {self.sustained_per_s:,.0f} health reports/s into PostgreSQL (zero loss:"
            f" {self.lost == 0})",
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


async def measure_ingest(
    *, devices: int, reports_per_device: int, publishers: int = 8, host: str = "127.0.0.1", port: int = 1883
) -> IngestFigures:
    tag = uuid.uuid4().hex[:6]
    ids = [f"B{tag}{i:06d}" for i in range(devices)]
    async with fresh_database() as url, open_pool(url, max_size=4) as pool:
        await migrate(pool)
        endpoint = BrokerEndpoint(host=host, port=port)
        async with Ingest(pool, endpoint, client_id=f"bench-ingest-{tag}", batch_size=2000, flush_s=0.1) as ingest:
            await ingest.wait_connected(10)
            started = time.perf_counter()

            async def publish(share: list[str]) -> None:
                async with aiomqtt.Client(host, port, identifier=f"bench-pub-{tag}-{share[0]}") as client:
                    for n in range(reports_per_device):
                        for device_id in share:
                            await client.publish(topics.up(device_id, topics.Up.HEALTH), _report(device_id, n), qos=1)

            await asyncio.gather(*(publish(ids[i::publishers]) for i in range(publishers) if ids[i::publishers]))
            published_s = time.perf_counter() - started
            expected = devices * reports_per_device
            while ingest.stats.written < expected and time.perf_counter() - started < published_s + 120:  # noqa: ASYNC110 - polls a counter.
                await asyncio.sleep(0.05)
            end_to_end = time.perf_counter() - started
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM device_health")
            stored = int((await cur.fetchone() or (0,))[0])
            async with conn.cursor() as out_cur, out_cur.copy("COPY (SELECT * FROM device_health) TO STDOUT") as out:
                blocks = [bytes(block) async for block in out]
            await conn.execute("TRUNCATE device_health")
            copy_started = time.perf_counter()
            async with conn.cursor() as copy_cur, copy_cur.copy("COPY device_health FROM STDIN") as copy:
                for block in blocks:
                    await copy.write(block)
            raw_s = time.perf_counter() - copy_started
    return IngestFigures(
        devices=devices,
        published=expected,
        stored=stored,
        lost=expected - stored,
        publish_s=published_s,
        end_to_end_s=end_to_end,
        sustained_per_s=stored / end_to_end,
        raw_copy_per_s=stored / raw_s if raw_s else 0.0,
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
