"""The schema: the numbered SQL files in `migrations/`, applied in order, each in its own
transaction, under an advisory lock so that several processes starting at once apply each
exactly once."""

from __future__ import annotations

import re
from importlib import resources

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from fleet_server.db import timescale
from fleet_server.errors import DatabaseError

log = structlog.get_logger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same in every process of this schema.
_MIGRATION_LOCK = 0x4844_0001


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    found = []
    for entry in resources.files("fleet_server.db").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(pool: AsyncConnectionPool) -> list[int]:
    """Bring the schema up to date; return the versions applied now."""
    applied_now: list[int] = []
    async with pool.connection() as conn:
        # What a migration says (RAISE NOTICE: a fallback and its reason) reaches the log.
        conn.add_notice_handler(_log_notice)
        await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            # Migration 0002 creates the extension only where it can be loaded (`timescale.decide`).
            decision = timescale.decide(await timescale.probe(conn))
            await conn.execute(
                "SELECT set_config(%s, %s, false)", (timescale.SETTING, "on" if decision.timescale else "off")
            )
            for version, name, sql in migrations():
                if version in done:
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(sql.encode())
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                        )
                except psycopg.Error as exc:
                    raise DatabaseError(f"migration {version:04d}_{name} failed: {exc}") from exc
                log.info("migration applied", version=version, name=name)
                applied_now.append(version)
        except psycopg.Error as exc:
            raise DatabaseError(f"migration failed: {exc}") from exc
        finally:
            conn.remove_notice_handler(_log_notice)
            await _unlock(conn)
    return applied_now


async def timescale_decision(pool: AsyncConnectionPool) -> timescale.Decision:
    """Whether the telemetry is in TimescaleDB here, and why (reported at start)."""
    async with pool.connection() as conn:
        return timescale.decide(await timescale.probe(conn))


async def _unlock(conn: psycopg.AsyncConnection[object]) -> None:
    """The migration lock given back; on a connection the server closed (a FATAL error in a
    migration) it is gone with the session, and the migration's own error is the one to see."""
    if conn.closed or conn.broken:
        log.warning("migration lock not released: the connection is gone (the lock went with it)")
        return
    try:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    except psycopg.Error as exc:
        log.warning("migration lock not released", error=str(exc))


def _log_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
    log.info("database notice during migration", severity=diagnostic.severity, message=diagnostic.message_primary)
