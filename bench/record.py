"""The cost of recording one payment (issue 23): the bridge's one statement that records a
payment, its deliveries and any not-announced event, committed, one payment at a time on one
connection (the backend's answer waits for it), for

- our backend's notification, which names our merchant (`RECORD_PAYMENTS`), and
- a platform's, routed to a merchant by our field or its platform id (`RECORD_ROUTED_PAYMENTS`),

against the ceiling: the commit of one plain row. 200 registered merchants, each with a bound
device; best of `repeats` runs of `messages` each (p50 and p95 of the best run).
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

from psycopg import AsyncConnection

from bench.env import DatabaseKind, database
from firmware_protocols.messages import AnnounceKind, Channel
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from payment_bridge.notifications import PaymentNotice
from payment_bridge.rows import record_statement
from payment_bridge.store import NewPayment
from simulators.registry import register

MERCHANTS = 200


@dataclass(frozen=True, slots=True)
class Cost:
    what: str
    p50_ms: float
    p95_ms: float

    def line(self) -> str:
        return f"{self.what:58} p50 {self.p50_ms:6.3f} ms  p95 {self.p95_ms:6.3f} ms"


@dataclass(frozen=True, slots=True)
class RecordFigures:
    database: str
    costs: list[Cost]

    def lines(self) -> list[str]:
        return [f"database: {self.database}", *(c.line() for c in self.costs)]


def _payment(source: str, merchant: str | None, platform_id: str | None) -> tuple[LiteralString, Any]:
    """The bridge's own statement and parameters for one new payment (`store.record_statement`)."""
    now, pid = datetime.now(tz=UTC), f"bench-{uuid.uuid4().hex}"
    notice = PaymentNotice(
        pid, pid, merchant, 1250, Channel.WECHAT, "SUCCESS", AnnounceKind.PAYMENT, now, "{}", platform_id
    )
    return record_statement([NewPayment(notice, source, now, now + timedelta(seconds=120))])


async def _time(conn: AsyncConnection[Any], make: Any, messages: int) -> list[float]:
    times = []
    for i in range(messages):
        statement, params = make(i)
        started = time.perf_counter()
        await conn.execute(statement, params)
        await conn.commit()
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)


async def measure(*, messages: int, repeats: int, database_kind: DatabaseKind) -> RecordFigures:
    async with database(database_kind) as db, open_pool(db.url, max_size=2) as pool:
        await migrate(pool)
        merchants = [f"BM{i:05d}" for i in range(MERCHANTS)]
        await register(pool, devices=[f"BD{i:05d}" for i in range(MERCHANTS)], merchants=merchants)
        async with pool.connection() as conn:
            for i, merchant in enumerate(merchants):
                await conn.execute(
                    "UPDATE merchants SET wechat_sub_mchid = %s WHERE merchant_id = %s", (f"19{i:08d}", merchant)
                )
                await conn.execute(
                    "INSERT INTO bindings (device_id, merchant_id) VALUES (%s, %s)", (f"BD{i:05d}", merchant)
                )
            await conn.execute("CREATE TEMP TABLE ceiling (id bigserial PRIMARY KEY, at timestamptz)")
            await conn.commit()
            ceiling: tuple[LiteralString, None] = ("INSERT INTO ceiling (at) VALUES (now())", None)
            cases: list[tuple[str, Any]] = [
                ("ceiling: commit of one plain row", lambda _: ceiling),
                (
                    "our backend's payment (RECORD_PAYMENTS)",
                    lambda i: _payment("backend", merchants[i % MERCHANTS], None),
                ),
                (
                    "a platform's, routed by sub_mchid (RECORD_ROUTED_PAYMENTS)",
                    lambda i: _payment("wechatpay", None, f"19{i % MERCHANTS:08d}"),
                ),
            ]
            costs = []
            for what, make in cases:
                runs = [await _time(conn, make, messages) for _ in range(repeats)]
                best = min(runs, key=statistics.median)
                costs.append(Cost(what, statistics.median(best), best[int(len(best) * 0.95)]))
        return RecordFigures(db.description, costs)
