"""Where device telemetry lives: one repository over two storage modes.

- **timescaledb**: `device_health` and `device_events` are hypertables with daily chunks,
  compressed after `compress_after_days` and dropped after `retention_days`, by the extension's
  own jobs; `maintain()` sets those jobs' policies to the settings (migration 0002 made them with
  3 and 90 days) and leaves the rest to the extension.
- **native partitions** (no TimescaleDB, as on CI): the same tables are range-partitioned by
  day; `maintain()` creates tomorrow's partitions ahead of time, moves any rows that landed in
  the default partition into their day, and drops days past retention, in the default partition
  too. PostgreSQL has no compression of old partitions: `compress_after_days` has nothing to do.

Rows are filed under the device's time, so an implausible one (unset, or a day ahead) is
replaced by the time of receipt before it gets here (`ingest.batch.implausible_time`): no
partition or chunk for 1970 or the year 5138.

Both modes keep the `device_daily` rollup (written by ingest), so queries read the same
tables either way. The mode is chosen once, by migration 0002, and `detect()` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

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
    dropped_rows: int = 0  # rows past retention in the default partition


def _partition_name(table: str, day: date) -> str:
    return f"{table}_{day:%Y%m%d}"


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class TelemetryStore:
    def __init__(self, pool: AsyncConnectionPool, *, retention_days: int = 90, compress_after_days: int = 3) -> None:
        self._pool = pool
        self.retention_days = retention_days
        self.compress_after_days = compress_after_days
        self.mode = StorageMode.NATIVE
        self._policies_set = False

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

    def describe(self) -> dict[str, object]:
        """The storage settings in use, for the start log."""
        compression = self.compress_after_days if self.mode is StorageMode.TIMESCALEDB else "none (native partitions)"
        return {
            "telemetry_storage": self.mode.value,
            "retention_days": self.retention_days,
            "compress_after_days": compression,
        }

    async def maintain(self, now: datetime) -> MaintenanceReport:
        """Native mode: partitions for yesterday..now+DAYS_AHEAD, retention. Timescale: the jobs'
        policies set to the settings (once per process; the extension runs them)."""
        report = MaintenanceReport()
        if self.mode is StorageMode.TIMESCALEDB:
            if not self._policies_set:
                await self._set_policies()
                self._policies_set = True
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
        if report.created or report.dropped or report.dropped_rows:
            log.info(
                "telemetry partitions maintained",
                created=report.created,
                dropped=report.dropped,
                moved_rows=report.moved_rows,
                dropped_rows=report.dropped_rows,
            )
        return report

    async def _set_policies(self) -> None:
        wanted = {"policy_retention": self.retention_days, "policy_compression": self.compress_after_days}
        changed = []
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_MAINTENANCE_LOCK,))
            try:
                for table in PARTITIONED_TABLES:
                    for proc, days in wanted.items():
                        if await _set_policy(conn, table, proc, days):
                            changed.append(f"{table} {proc} {days} days")
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_MAINTENANCE_LOCK,))
        if changed:
            log.info("telemetry policies set", changed=changed)

    async def _maintain(
        self, conn: AsyncConnection[Any], today: date, wanted: list[date], report: MaintenanceReport
    ) -> None:
        oldest_kept = today - timedelta(days=self.retention_days)
        for table in PARTITIONED_TABLES:
            # Rows past retention that no partition would take (a device's backlog of old
            # reports) go with the days they belong to.
            cur = await conn.execute(
                sql.SQL("DELETE FROM {} WHERE ts < %s").format(sql.Identifier(f"{table}_default")),
                (_day_start(oldest_kept),),
            )
            report.dropped_rows += max(cur.rowcount, 0)
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


# The days a policy job of the extension has now, or NULL: (table, proc, days).
_POLICY_MATCHES: Final = """
SELECT (COALESCE(config->>'drop_after', config->>'compress_after'))::interval = make_interval(days => %s)
FROM timescaledb_information.jobs WHERE hypertable_schema = current_schema()
  AND hypertable_name = %s AND proc_name = %s
"""
_POLICY_FUNCTIONS: Final = {
    "policy_retention": ("remove_retention_policy", "add_retention_policy"),
    "policy_compression": ("remove_compression_policy", "add_compression_policy"),
}


async def _set_policy(conn: AsyncConnection[Any], table: str, proc: str, days: int) -> bool:
    """Make `table`'s `proc` job keep `days`; True if it had to change."""
    cur = await conn.execute(_POLICY_MATCHES, (days, table, proc))
    row = await cur.fetchone()
    if row is not None and row[0]:
        return False
    remove, add = (sql.Identifier(name) for name in _POLICY_FUNCTIONS[proc])
    async with conn.transaction():
        await conn.execute(sql.SQL("SELECT {}(%s, if_exists => true)").format(remove), (table,))
        await conn.execute(sql.SQL("SELECT {}(%s, make_interval(days => %s))").format(add), (table, days))
    return True


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
