"""Which payments this device has already taken (and which commands it has run), kept across
restarts, and the announcements a crash left unplayed.

A merchant must hear each payment once. Broker redelivery (QoS 1), server retries and replays
all arrive as the same `payment_id`; this window remembers the last `capacity` ids for
`max_age_s` (defaults: 10,000 ids, 24 h: a busy shop takes a few hundred payments a day, and
the server never retries past an announce's TTL). Commands use a second window by
`command_id`, so a redelivered reboot does not reboot twice.

Each payment moves `queued` (taken, waiting for the speaker; its announce is kept) →
`playing` (written just before speech starts) → `done`. After a kill or a crash the agent plays
again what was still `queued`, so a queue of announcements is not lost with the process; what
was `playing` is not repeated (a double "到账" is worse than a missing one). The window lives in
SQLite (standard library, on every board) in WAL mode with `synchronous=NORMAL`: a write
survives the process being killed at once, and costs tens of microseconds, so it sits on the
announce path; only an OS crash or power cut can lose the last few writes.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import structlog

from edge_agent.state_files import open_sqlite

log = structlog.get_logger(__name__)

State = Literal["queued", "playing", "done"]


class SeenIds:
    def __init__(self, path: Path | None, *, capacity: int = 10_000, max_age_s: int = 24 * 3600) -> None:
        self._capacity = capacity
        self._max_age_ms = max_age_s * 1000
        self._seen: OrderedDict[str, int] = OrderedDict()
        # Records the disk would not take (full); each is still remembered in memory.
        self.unstored = 0
        self._db = open_sqlite(path, synchronous="NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at_ms INTEGER NOT NULL,"
            " state TEXT NOT NULL DEFAULT 'done', payload BLOB)"
        )
        for seen_id, at_ms in self._db.execute("SELECT id, at_ms FROM seen ORDER BY at_ms"):
            self._seen[seen_id] = at_ms

    def __contains__(self, seen_id: str) -> bool:
        return seen_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def newest(self) -> tuple[str, int] | None:
        """The id remembered last and when, if any."""
        if not self._seen:
            return None
        seen_id = next(reversed(self._seen))
        return seen_id, self._seen[seen_id]

    def remember(self, seen_id: str, now_ms: int, *, payload: bytes | None = None) -> bool:
        """Record `seen_id` (with the `payload` to replay it from, if any, as `queued`; else
        `done`); True if it is new, False if it was seen within the window."""
        if seen_id in self._seen:
            return False
        self._seen[seen_id] = now_ms
        evicted: list[str] = []
        while self._seen and (
            len(self._seen) > self._capacity or next(iter(self._seen.values())) < now_ms - self._max_age_ms
        ):
            evicted.append(self._seen.popitem(last=False)[0])
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?)",
                    (seen_id, now_ms, "done" if payload is None else "queued", payload),
                )
                self._db.executemany("DELETE FROM seen WHERE id = ?", [(e,) for e in evicted])
        except sqlite3.Error as exc:
            # A full disk must not silence the payment: the id stays remembered in memory (no
            # second play while this process lives) and the payment is played; only a restart
            # before the disk frees up could forget it (found by the fault suite, issue 10).
            self._not_stored(seen_id, exc)
        return True

    def mark(self, seen_id: str, state: State) -> None:
        """Move `seen_id` on; `done` drops the kept payload."""
        try:
            if state == "done":
                self._db.execute("UPDATE seen SET state = 'done', payload = NULL WHERE id = ?", (seen_id,))
            else:
                self._db.execute("UPDATE seen SET state = ? WHERE id = ?", (state, seen_id))
        except sqlite3.Error as exc:
            self._not_stored(seen_id, exc)

    def _not_stored(self, seen_id: str, exc: sqlite3.Error) -> None:
        self.unstored += 1
        log.warning("dedup record not stored; kept in memory only", seen_id=seen_id, error=str(exc))

    def unplayed(self) -> list[tuple[bytes, int]]:
        """The payloads of what was taken but never started, and when each was taken, oldest first."""
        rows = self._db.execute("SELECT payload, at_ms FROM seen WHERE state = 'queued' ORDER BY at_ms").fetchall()
        return [(bytes(payload), at_ms) for payload, at_ms in rows if payload is not None]

    def close(self) -> None:
        self._db.close()
