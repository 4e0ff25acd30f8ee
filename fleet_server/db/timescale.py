"""Whether the telemetry goes into TimescaleDB hypertables or native partitions, decided before
any migration runs, from what the server says on a connection of its own.

A server can have the extension's files and still be unable to load it: without
`shared_preload_libraries = 'timescaledb'`, `CREATE EXTENSION` ends the session with a FATAL
error that no `EXCEPTION` block catches (a common state on managed and shared servers); without
superuser rights it is refused. So the migrations are told the decision (the session setting
`haodian.timescaledb`, read by migration 0002) instead of trying, and the start log says which
mode and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import psycopg

# The session setting migration 0002 reads: 'on' to create the extension, 'off' not to try.
SETTING: Final = "haodian.timescaledb"

_FACTS: Final = """
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
       -- A plain user may not read this setting (pg_settings hides its row: NULL, false).
       COALESCE('timescaledb' = ANY(string_to_array(replace(
           (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'), ' ', ''), ',')), false),
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
"""


@dataclass(frozen=True, slots=True)
class Facts:
    """The server's answers: the extension created in this database, its files installed, the
    library preloaded (false where the user may not see the setting), and the current user a
    superuser (who alone may create it)."""

    created: bool
    installed: bool
    preloaded: bool
    superuser: bool


@dataclass(frozen=True, slots=True)
class Decision:
    timescale: bool
    reason: str  # for the start log: why this mode


def decide(facts: Facts) -> Decision:
    if facts.created:
        return Decision(True, "timescaledb loaded in this database")
    if not facts.installed:
        return Decision(False, "timescaledb not installed on the server: native partitions")
    if not facts.superuser:
        return Decision(False, "timescaledb installed, but this user may not create extensions: native partitions")
    if not facts.preloaded:
        return Decision(
            False,
            "timescaledb installed but not in shared_preload_libraries (creating it would end the session):"
            " native partitions",
        )
    return Decision(True, "timescaledb installed and preloaded: created")


async def probe(conn: psycopg.AsyncConnection[Any]) -> Facts:
    cur = await conn.execute(_FACTS)
    row = await cur.fetchone()
    if row is None:  # pragma: no cover - a SELECT without FROM always answers
        raise RuntimeError("the server did not answer the TimescaleDB probe")
    return Facts(*(bool(v) for v in row))
