"""The two ways batches are written: COPY rows (append-only tables) and unnest() columns
(set-based upserts), one statement per table whatever the batch's size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg


def columns(rows: Iterable[Sequence[object]], width: int) -> list[list[object]]:
    """Rows turned into `width` column lists: the parameters of one `unnest(...)` statement."""
    out: list[list[object]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(out, row, strict=True):
            column.append(value)
    return out


async def copy_rows(cur: psycopg.AsyncCursor[Any], statement: str, rows: Iterable[Sequence[object]]) -> None:
    """Stream `rows` into a `COPY ... FROM STDIN` statement (append-only tables)."""
    async with cur.copy(statement) as copy:
        for row in rows:
            await copy.write_row(row)
