"""The announce benchmark's dealings with the database: the commit ceiling, the bind alerts
settling before the timed run, and the run's results read back."""

from __future__ import annotations

import asyncio
import time

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench.stats import percentiles

SETTLE_S = 30.0


async def commit_ceiling(pool: AsyncConnectionPool) -> dict[str, float | None]:
    """One-row INSERTs, each its own durable commit: the floor under 'recorded durably'."""
    times: list[float] = []
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE bench_commit (id bigint, at timestamptz, body text)")
        for n in range(500):
            started = time.perf_counter()
            await conn.execute("INSERT INTO bench_commit VALUES (%s, now(), %s)", (n, "x" * 300))
            times.append((time.perf_counter() - started) * 1000)
        await conn.execute("DROP TABLE bench_commit")
    return percentiles(times)


async def alerts_settled(database_url: str) -> int:
    """Wait (up to SETTLE_S) until no bind alert is pending; how many still are."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + SETTLE_S
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM deliveries d JOIN payments p USING (payment_id)"
                " WHERE p.kind = 'alert' AND d.status = 'pending'"
            )
            row = await cur.fetchone()
            left = int(row[0]) if row else 0
            if left == 0 or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.5)


async def results(database_url: str) -> tuple[int, int, int, float, dict[str, float], float]:
    """After the acks settle: (played, missed, pending, seconds between first and last payment,
    latency in ms by payment, payments per write: rows one transaction wrote share its xmin)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        settle_deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < settle_deadline:
            cur = await conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'")
            if (await cur.fetchone()) == (0,):
                break
            await asyncio.sleep(0.5)
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE d.status = 'played'), count(*) FILTER (WHERE d.status = 'missed'),"
            " count(*) FILTER (WHERE d.status = 'pending'),"
            " date_part('epoch', max(p.received_at) - min(p.received_at))"
            " FROM deliveries d JOIN payments p USING (payment_id) WHERE p.kind = 'payment'"  # not the bind alerts
        )
        delivered, missed, pending, span = (await cur.fetchone()) or (0, 0, 0, 0.0)
        cur = await conn.execute(
            "SELECT d.payment_id, date_part('epoch', d.play_started_at - p.received_at) * 1000"
            " FROM deliveries d JOIN payments p USING (payment_id) WHERE d.status = 'played' AND p.kind = 'payment'"
        )
        latencies = {row[0]: float(row[1]) for row in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT count(*)::float8 / greatest(count(DISTINCT xmin::text), 1) FROM payments WHERE kind = 'payment'"
        )
        batch = float(((await cur.fetchone()) or (1.0,))[0])
    return delivered, missed, pending, float(span or 0.0), latencies, batch
