"""`rollups`: what keeping the delivery rollups costs PostgreSQL per notification.

The bridge's writes of a notification, batched as the bridge batches them: the payment and its
pending delivery in one transaction, the device's ack (played, play start) in another. Their
statement time per notification is timed with the delivery rollups built (the triggers of
migrations 0015-0017 add every settled delivery to the slice, device and sealed-day rows in
the same statements) and, interleaved with it, with the rollups not built (the triggers check
the clock and return: the floor). Tables are analyzed before each run, as autovacuum keeps them
in service, so both modes run the plans a long-lived database runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any

from psycopg import AsyncConnection

from bench.env import BenchError, DatabaseKind, database
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.devices import rollups

_HIERARCHY = (
    "INSERT INTO cities VALUES ('C1', 'city')",
    "INSERT INTO districts VALUES ('D1', 'C1', 'district')",
    "INSERT INTO stores (store_id, district_id, name) SELECT 'S' || s, 'D1', 'store' FROM generate_series(1, 20) s",
    "INSERT INTO devices (device_id, model, firmware)"
    " SELECT 'T' || lpad(i::text, 5, '0'), 'HD-S1', '1.0.0' FROM generate_series(1, %(devices)s) i",
    "INSERT INTO merchants (merchant_id, store_id, name)"
    " SELECT 'M' || substr(device_id, 2), 'S' || (1 + abs(hashtext(device_id)) %% 20), 'merchant' FROM devices",
    "INSERT INTO bindings (device_id, merchant_id) SELECT device_id, 'M' || substr(device_id, 2) FROM devices",
)
_PAYMENTS = (
    "INSERT INTO payments (payment_id, source, notify_id, merchant_id, amount_fen, channel, kind, status, paid_at,"
    " received_at, raw)"
    " SELECT id, 'bench', id, 'M' || substr(d, 2), 1250, 'wechat', 'payment', 'SUCCESS', %(at)s, %(at)s, '{}'"
    " FROM unnest(%(ids)s::text[], %(devs)s::text[]) AS u (id, d)"
)
_DELIVERIES = (
    "INSERT INTO deliveries (payment_id, device_id, expires_at, last_published_at)"
    " SELECT id, d, %(at)s::timestamptz + interval '5 minutes', %(at)s FROM unnest(%(ids)s::text[], %(devs)s::text[])"
    " AS u (id, d)"
)
_ACKS = (
    "UPDATE deliveries SET status = 'played', acks = 1, acked_at = %(at)s::timestamptz + interval '30 ms',"
    " play_started_at = %(at)s::timestamptz + interval '20 ms'"
    " FROM unnest(%(ids)s::text[], %(devs)s::text[]) AS u (id, d) WHERE payment_id = u.id AND device_id = u.d"
)
_BUILT = "UPDATE figure_clock SET deliveries_offset_min = %s"


@dataclass(frozen=True, slots=True)
class RollupFigures:
    database: str
    devices: int
    batch: int
    per_run: int
    # Per mode, the statement time per notification of each run (µs): recording, ack.
    runs: dict[str, list[tuple[float, float]]]
    counted: int  # notifications the rollups counted, all of the built runs'

    def lines(self) -> list[str]:
        out = [
            f"database: {self.database}",
            f"{self.devices:,} devices; {self.per_run:,} notifications a run in batches of {self.batch};"
            f" runs interleaved, tables analyzed before each; {self.counted:,} counted by the rollups, all played",
        ]
        for mode, runs in self.runs.items():
            out.append(
                f"{mode}: PostgreSQL statement time per notification, median of {len(runs)} runs:"
                f" {median(a + b for a, b in runs):.0f} µs (recording {median(a for a, _ in runs):.0f},"
                f" ack {median(b for _, b in runs):.0f}); runs " + ", ".join(f"{a + b:.0f}" for a, b in runs)
            )
        built, floor = (median(a + b for a, b in self.runs[m]) for m in _MODES)
        out.append(f"the rollups cost {built - floor:.0f} µs per notification over the floor")
        return out


_MODES = ("rollups built", "rollups not built (floor)")


async def _run(conn: AsyncConnection[Any], tag: str, *, devices: int, batch: int, batches: int) -> tuple[float, float]:
    await conn.execute("ANALYZE")
    recording = ack = 0.0
    for i in range(batches):
        params = {
            "at": datetime.now(tz=UTC),
            "ids": [f"{tag}-{i}-{k}" for k in range(batch)],
            "devs": [f"T{1 + (i * batch + k) % devices:05d}" for k in range(batch)],
        }
        t = time.perf_counter()
        async with conn.transaction():
            await conn.execute(_PAYMENTS, params)
            await conn.execute(_DELIVERIES, params)
        recording += time.perf_counter() - t
        t = time.perf_counter()
        async with conn.transaction():
            await conn.execute(_ACKS, params)
        ack += time.perf_counter() - t
    n = batch * batches
    return recording * 1e6 / n, ack * 1e6 / n


async def measure(
    *, devices: int = 1000, batch: int = 100, batches: int = 60, repeats: int = 5, database_kind: DatabaseKind
) -> RollupFigures:
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in _MODES}
    async with database(database_kind) as db, open_pool(db.url, max_size=1) as pool:
        await migrate(pool)
        async with pool.connection() as conn:
            for statement in _HIERARCHY:
                await conn.execute(statement, {"devices": devices})
        await rollups.rebuild(pool, datetime.now(tz=UTC) - timedelta(minutes=1), fleet_offset_min=480)
        async with pool.connection() as conn:
            await _run(conn, "warm", devices=devices, batch=batch, batches=batches)
            for r in range(repeats):
                for mode, offset in zip(_MODES, (480, None), strict=True):
                    await conn.execute(_BUILT, (offset,))
                    runs[mode].append(await _run(conn, f"{r}-{offset}", devices=devices, batch=batch, batches=batches))
                print(f"run {r + 1} of {repeats} done", flush=True)
            # The built runs' (and the warm-up's) notifications are all in the rows, played.
            cur = await conn.execute("SELECT sum(announcements), sum(played) FROM delivery_device_days")
            counted = await cur.fetchone() or (None, None)
    expected = batch * batches * (repeats + 1)
    if tuple(counted) != (expected, expected):
        raise BenchError(f"the rollups counted {counted} (announced, played) of {expected} notifications")
    return RollupFigures(db.description, devices, batch, batch * batches, runs, expected)
