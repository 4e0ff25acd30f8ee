"""One way to run a statement: a named statement from a slice's `queries` module, its
parameters, and the rows back as models, dicts or tuples.

    devices = await fetch_models(pool, DeviceView, queries.LIST_DEVICES, {...})
    row = await fetch_row(conn, queries.LOCK_TASK, (task_id,))     # inside the caller's transaction

Each helper takes the pool (a connection for the one statement) or a connection the caller
holds (its transaction). Statements that need a status or state name take it from its enum
through `statement()`, once, when the queries module is imported: SQL never retypes a value an
enum defines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any, LiteralString, TypeVar

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
Source = AsyncConnectionPool | AsyncConnection[Any]
Params = Sequence[Any] | Mapping[str, Any] | None
Query = LiteralString | str | sql.Composable


def statement(text: str, **values: str | Iterable[str]) -> LiteralString:
    """`text` with each `{name}` replaced by the SQL literal of `values[name]`: a name (an enum
    member's value), or an array of names (for `= ANY(...)`), sorted. `%s` parameters are left
    alone; a literal `{` or `}` in the text is written twice. Unused values are ignored, so a
    queries module can hand every statement the same table of names."""
    literals = {
        name: sql.Literal(_name(value) if isinstance(value, str) else sorted(_name(v) for v in value))
        for name, value in values.items()
    }
    # Our constant text with psycopg's own quoting of our own names: a constant statement.
    return sql.SQL(text).format(**literals).as_string()


def _name(value: str) -> str:
    return value.value if isinstance(value, StrEnum) else value


@asynccontextmanager
async def _connection(source: Source) -> AsyncIterator[AsyncConnection[Any]]:
    if isinstance(source, AsyncConnection):
        yield source
    else:
        async with source.connection() as conn:
            yield conn


async def fetch_dicts(source: Source, query: Query, params: Params = None) -> list[dict[str, Any]]:
    async with _connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)  # type: ignore[arg-type]
        return await cur.fetchall()


async def fetch_models(source: Source, model: type[M], query: Query, params: Params = None) -> list[M]:
    return [model.model_validate(row) for row in await fetch_dicts(source, query, params)]


async def fetch_model(source: Source, model: type[M], query: Query, params: Params = None) -> M | None:
    """The first row as `model`, or None when there is none."""
    rows = await fetch_dicts(source, query, params)
    return model.model_validate(rows[0]) if rows else None


async def fetch_rows(source: Source, query: Query, params: Params = None) -> list[tuple[Any, ...]]:
    async with _connection(source) as conn:
        cur = await conn.execute(query, params)  # type: ignore[arg-type]
        return await cur.fetchall()


async def fetch_row(source: Source, query: Query, params: Params = None) -> tuple[Any, ...] | None:
    async with _connection(source) as conn:
        cur = await conn.execute(query, params)  # type: ignore[arg-type]
        return await cur.fetchone()


async def execute(source: Source, query: Query, params: Params = None) -> int:
    """Run a statement; the rows it touched."""
    async with _connection(source) as conn:
        cur = await conn.execute(query, params)  # type: ignore[arg-type]
        return cur.rowcount
