"""Write a batch so that no message in it can stop the rest.

    poisoned = await write_apart(batch, write, on_transient=wait_and_retry)
    for item, error in poisoned: quarantine(item, error)

`write` takes a list and commits it in one transaction. When the database refuses it for the
data's sake (`failures.is_transient` is False), the batch is split in two and each half is
written on its own, down to single messages: the good ones commit, each bad one comes back with
its error. A batch of n with one poison message costs about 2·log2(n) extra transactions, once.
A transient failure is handed to `on_transient` (which waits: backoff) and the same part is
tried again; without it the failure is raised, to a caller that retries the whole batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from fleet_server.db.failures import is_transient

T = TypeVar("T")


async def write_apart(
    items: Sequence[T],
    write: Callable[[Sequence[T]], Awaitable[object]],
    *,
    on_transient: Callable[[Exception], Awaitable[None]] | None = None,
) -> list[tuple[T, Exception]]:
    """Write `items`; return the ones that can never be written, each with why."""
    if not items:
        return []
    while True:
        try:
            await write(items)
        except Exception as exc:  # sorted here: transient, or the data's fault
            if is_transient(exc):
                if on_transient is None:
                    raise
                await on_transient(exc)
                continue
            if len(items) == 1:
                return [(items[0], exc)]
            half = len(items) // 2
            first = await write_apart(items[:half], write, on_transient=on_transient)
            return first + await write_apart(items[half:], write, on_transient=on_transient)
        return []
