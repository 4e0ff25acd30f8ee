"""The connection pool every server part shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool

from fleet_server.errors import DatabaseError


@asynccontextmanager
async def open_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True})
    try:
        await pool.open(wait=True, timeout=15)
    except psycopg.Error as exc:
        await pool.close()
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        yield pool
    finally:
        await pool.close()


def with_database(url: str, name: str) -> str:
    """`url` (a `postgresql://` URL) naming the database `name` instead: its host, port, user
    and query (`?host=/socket/dir`) kept."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))
