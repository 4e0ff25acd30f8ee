"""Which database failures are outages and which are the data's fault.

    try:
        await write(batch)
    except Exception as exc:
        if is_transient(exc): ...      # keep the batch, retry with backoff: the database is away
        else: ...                      # split it: some message in it can never be stored

A transient failure says nothing about the messages: the connection is gone (SQLSTATE class
08), the server is out of resources (53), shutting down or cancelled by an operator (57), or
its system failed (58, e.g. an I/O error), or the pool has no connection to give. Everything
else (classes 22 data exception and 23 integrity, a value the driver could not encode, a code
refusal) is a data failure: retrying the same messages gives the same answer for ever, so the
consumer isolates them instead (`isolate.write_apart`). An unknown failure counts as data: at
worst good messages are written one by one, where a wrong "transient" would stop the stream.
"""

from __future__ import annotations

import psycopg
import psycopg_pool

TRANSIENT_CLASSES = frozenset({"08", "53", "57", "58"})


def sqlstate_class(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state[:2] if isinstance(state, str) else None


def is_transient(exc: BaseException) -> bool:
    """True if `exc` says the database is away, not that the data is bad."""
    if isinstance(exc, psycopg_pool.PoolTimeout | OSError | TimeoutError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    cls = sqlstate_class(exc)
    if cls is not None:
        return cls in TRANSIENT_CLASSES
    # No SQLSTATE: raised by the driver. A lost or closed connection is an OperationalError
    # (or InterfaceError); an encoding refusal (NUL in text) is a DataError.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def describe(exc: BaseException) -> str:
    """One line for a log or the quarantine: the SQLSTATE, if any, and the message."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{state}: {text}" if state else f"{type(exc).__name__}: {text}"
