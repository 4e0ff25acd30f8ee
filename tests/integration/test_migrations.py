"""Migrations: a failing one reports its own error, whatever it did to the connection; and the
rollup migrations applied to a database already in service build what they add from what the
database holds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from fleet_server.db import migrate as migrate_module
from fleet_server.db import timescale
from fleet_server.db.migrate import migrate, migrations
from fleet_server.db.pool import open_pool
from fleet_server.devices.delivery_rollups import DELIVERY_LOCK
from fleet_server.errors import DatabaseError

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

_RAW_BY_DEVICE_DAY = """
SELECT dl.device_id, local_day(p.received_at, 480), count(*), count(*) FILTER (WHERE delivery_heard(dl.status))
FROM payments p JOIN deliveries dl USING (payment_id) WHERE delivery_counted(p.kind, dl.status)
GROUP BY 1, 2 ORDER BY 1, 2
"""
_ROWS = "SELECT device_id, day, announcements, played FROM delivery_device_days WHERE announcements <> 0 ORDER BY 1, 2"


async def _record(conn, payment_id: str, merchant: str, at: datetime, status: str) -> None:
    await conn.execute(
        "WITH p AS (INSERT INTO payments (payment_id, source, notify_id, merchant_id, amount_fen, channel, kind,"
        " status, paid_at, received_at, raw) VALUES (%(id)s, 'test', %(id)s, %(m)s, 100, 'wechat', 'payment',"
        " 'success', %(at)s, %(at)s, '{}') RETURNING payment_id, merchant_id)"
        " INSERT INTO deliveries (payment_id, device_id, status, expires_at, last_published_at, play_started_at)"
        " SELECT p.payment_id, b.device_id, %(status)s, %(at)s, %(at)s, %(at)s::timestamptz + interval '40 ms'"
        " FROM p JOIN bindings b USING (merchant_id)",
        {"id": payment_id, "m": merchant, "at": at, "status": status},
    )


async def test_deliveries_by_device_are_built_from_the_raw_deliveries_on_upgrade(machine_database):
    """Migration 0017 on a database whose delivery rollups count already: its device rows are the
    raw deliveries' counts, and the next delivery is counted in them too."""
    now = datetime.now(tz=UTC)
    async with open_pool(machine_database, max_size=2) as pool:
        async with pool.connection() as conn:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, name, text in migrations():
                if version < 17:
                    async with conn.transaction():
                        await conn.execute(text.encode())
                        await conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, name))
            await conn.execute(
                "INSERT INTO devices (device_id, model, firmware) VALUES ('A', 'HD-S1', '1'), ('B', 'HD-S1', '1')"
            )
            await conn.execute("INSERT INTO cities VALUES ('C1', 'city')")
            await conn.execute("INSERT INTO districts VALUES ('D1', 'C1', 'district')")
            await conn.execute("INSERT INTO stores (store_id, district_id, name) VALUES ('S1', 'D1', 'store')")
            await conn.execute(
                "INSERT INTO merchants (merchant_id, store_id, name) VALUES ('MA', 'S1', 'a'), ('MB', 'S1', 'b')"
            )
            await conn.execute("INSERT INTO bindings (device_id, merchant_id) VALUES ('A', 'MA'), ('B', 'MB')")
            # The delivery rollups count (as after their first build), by slice only before 0017.
            await conn.execute("UPDATE figure_clock SET deliveries_offset_min = 480, hours_from = %s", (now,))
            for i, (merchant, days_ago, status) in enumerate(
                [
                    ("MA", 0, "played"),
                    ("MA", 1, "missed"),
                    ("MA", 1, "played"),
                    ("MB", 2, "duplicate"),
                    ("MB", 0, "pending"),
                ]
            ):
                await _record(conn, f"P{i}", merchant, now - timedelta(days=days_ago), status)
            cur = await conn.execute("SELECT sum(announcements) FROM delivery_days")
            assert (await cur.fetchone())[0] == 4  # settled ones, counted by 0015's trigger

        later = [version for version, _, _ in migrations() if version >= 17]
        assert await migrate(pool) == later  # 0017 and every one after it
        async with pool.connection() as conn:
            raw = await (await conn.execute(_RAW_BY_DEVICE_DAY)).fetchall()
            assert len(raw) == 3
            assert await (await conn.execute(_ROWS)).fetchall() == raw
            # From now on the trigger counts both ways: the pending one played late.
            await conn.execute(
                "UPDATE deliveries SET status = 'played', play_started_at = now() WHERE payment_id = 'P4'"
            )
            raw = await (await conn.execute(_RAW_BY_DEVICE_DAY)).fetchall()
            assert len(raw) == 4
            assert await (await conn.execute(_ROWS)).fetchall() == raw
            cur = await conn.execute("SELECT sum(announcements) FROM delivery_days")
            assert (await cur.fetchone())[0] == 5


def test_the_backfill_waits_for_the_bridges_writes():
    """The backfill holds the delivery rollup lock exclusive (the triggers take it shared)."""
    [text] = [text for version, _, text in migrations() if version == 17]
    assert f"SELECT pg_advisory_xact_lock({DELIVERY_LOCK});" in text


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        # A FATAL error closes the connection (as "extension must be preloaded" does): the
        # lock's release on the dead connection must not replace it.
        ("SELECT pg_terminate_backend(pg_backend_pid())", "terminating connection"),
        ("SELECT 1/0", "division by zero"),
    ],
)
async def test_a_failing_migration_reports_its_own_error(machine_database, monkeypatch, sql, said):
    shipped = migrations()
    monkeypatch.setattr(migrate_module, "migrations", lambda: [*shipped, (9999, "breaks", sql)])
    async with open_pool(machine_database, max_size=1) as pool:
        with pytest.raises(DatabaseError, match=f"migration 9999_breaks failed: .*{said}"):
            await migrate(pool)
        # Nothing of it stayed, the lock is free, and the next start fails the same way.
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT max(version) FROM schema_migrations")
            assert (await cur.fetchone())[0] == shipped[-1][0]
        with pytest.raises(DatabaseError, match=said):
            await migrate(pool)


async def test_the_migrations_are_told_whether_timescaledb_can_be_loaded(machine_database):
    """The probe's answers on this server, for the superuser and for a user who may not create
    extensions; the migrations run with the decision set (migration 0002 reads it)."""
    role = f"haodian_plain_{uuid.uuid4().hex[:8]}"
    async with open_pool(machine_database, max_size=1) as pool:
        async with pool.connection() as conn:
            facts = await timescale.probe(conn)
            available = await (
                await conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
            ).fetchone()
            await conn.execute(f"CREATE ROLE {role} LOGIN")
        try:
            assert facts.superuser
            assert facts.installed is bool(available[0])
            decision = timescale.decide(facts)
            assert await migrate_module.timescale_decision(pool) == decision
            await migrate(pool)
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT current_setting(%s)", (timescale.SETTING,))
                assert (await cur.fetchone())[0] == ("on" if decision.timescale else "off")
            async with await psycopg.AsyncConnection.connect(with_database_user(machine_database, role)) as plain:
                assert not (await timescale.probe(plain)).superuser
        finally:
            async with pool.connection() as conn:
                await conn.execute(f"DROP ROLE {role}")


def with_database_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.netloc.split('@', 1)[-1]}"))
