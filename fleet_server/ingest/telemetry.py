"""Where device telemetry lives: one repository over two storage modes.

- **timescaledb**: `device_health` and `device_events` are hypertables with daily chunks,
  compression after 3 days and retention of 90 days, all run by the extension's own jobs.
- **native partitions** (no TimescaleDB, as on CI): the same tables are range-partitioned by
  day; `maintain()` creates tomorrow's partitions ahead of time, moves any rows that landed in
  the default partition into their day, and drops days past retention.

Both modes keep the `device_daily` rollup (written by ingest), so queries read the same
tables either way. The mode is chosen once, by migration 0002, and `detect()` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

PARTITIONED_TABLES = ("device_health", "device_events")
# Partitions exist this many days ahead, so a late maintenance run never leaves rows in default.
DAYS_AHEAD = 2
_MAINTENANCE_LOCK = 0x4844_0003


class StorageMode(StrEnum):
    TIMESCALEDB = "timescaledb"
    NATIVE = "native partitions"


@dataclass(slots=True)
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved_rows: int = 0


def _partition_name(table: str, day: date) -> str:
    return f"{table}_{day:%Y%m%d}"


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class TelemetryStore:
    def __init__(self, pool: AsyncConnectionPool, *, retention_days: int = 90) -> None:
        self._pool = pool
        self.retention_days = retention_days
        self.mode = StorageMode.NATIVE

    async def detect(self) -> StorageMode:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
                " AND NOT EXISTS (SELECT 1 FROM pg_partitioned_table p"
                "  JOIN pg_class c ON c.oid = p.partrelid WHERE c.relname = 'device_health')"
            )
            row = await cur.fetchone()
        self.mode = StorageMode.TIMESCALEDB if row and row[0] else StorageMode.NATIVE
        return self.mode

    async def maintain(self, now: datetime) -> MaintenanceReport:
        """Native mode: partitions for yesterday..now+DAYS_AHEAD, retention. Timescale: nothing to do."""
        report = MaintenanceReport()
        if self.mode is StorageMode.TIMESCALEDB:
            return report
        today = now.astimezone(UTC).date()
        wanted = [today + timedelta(days=n) for n in range(-1, DAYS_AHEAD + 1)]
        async with self._pool.connection() as conn:
            # Several server processes start at once: one maintains, the others wait and find it done.
            await conn.execute("SELECT pg_advisory_lock(%s)", (_MAINTENANCE_LOCK,))
            try:
                await self._maintain(conn, today, wanted, report)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_MAINTENANCE_LOCK,))
        if report.created or report.dropped:
            log.info(
                "telemetry partitions maintained",
                created=report.created,
                dropped=report.dropped,
                moved_rows=report.moved_rows,
            )
        return report

    async def _maintain(
        self, conn: AsyncConnection[Any], today: date, wanted: list[date], report: MaintenanceReport
    ) -> None:
        oldest_kept = today - timedelta(days=self.retention_days)
        for table in PARTITIONED_TABLES:
            existing = await _partitions(conn, table)
            # Days that already have rows in the default partition get a partition too.
            cur = await conn.execute(
                sql.SQL("SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM {}").format(
                    sql.Identifier(f"{table}_default")
                )
            )
            stray = [row[0] for row in await cur.fetchall()]
            for day in sorted(set(wanted) | {d for d in stray if d >= oldest_kept}):
                name = _partition_name(table, day)
                if name not in existing:
                    report.moved_rows += await _create_partition(conn, table, day)
                    report.created.append(name)
            for name, day in existing.items():
                if day < oldest_kept:
                    await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                    report.dropped.append(name)


async def _partitions(conn: AsyncConnection[Any], table: str) -> dict[str, date]:
    """`table`'s daily partitions by name."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
        (table,),
    )
    found = {}
    for (name,) in await cur.fetchall():
        suffix = name.removeprefix(f"{table}_")
        if suffix.isdigit() and len(suffix) == 8:
            found[name] = datetime.strptime(suffix, "%Y%m%d").replace(tzinfo=UTC).date()
    return found


async def _create_partition(conn: AsyncConnection[Any], table: str, day: date) -> int:
    """Create `table`'s partition for `day`, moving rows of that day out of the default one."""
    name = sql.Identifier(_partition_name(table, day))
    default = sql.Identifier(f"{table}_default")
    parent = sql.Identifier(table)
    start, end = _day_start(day), _day_start(day + timedelta(days=1))
    async with conn.transaction():
        await conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(name, parent))
        cur = await conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {} WHERE ts >= %s AND ts < %s RETURNING *)"
                " INSERT INTO {} SELECT * FROM moved"
            ).format(default, name),
            (start, end),
        )
        moved = cur.rowcount
        await conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                parent, name, sql.Literal(start), sql.Literal(end)
            )
        )
    return max(moved, 0)
