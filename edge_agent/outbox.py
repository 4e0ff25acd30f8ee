"""Uplink messages waiting for the broker, on disk so that a power cut loses none of them.

While the link is down (or while older messages are still waiting) every uplink message goes
here and is sent later in the order it was produced. Acks are never evicted: the server needs
each one to prove a payment was announced. Telemetry (health, events, results) is bounded, and
when it is full the oldest goes first: a day-old health report is worth less than today's.

The store is one SQLite table (the standard library has it; every board has it) with
`synchronous=FULL`: an ack written here is on the flash before `put` returns. Writes happen only
while offline, so the cost never sits on the announce path of a connected device. If the disk
fails (full, read-only), messages are held in memory instead and `disk_error` says why, so the
health report can say the storage is at fault and nothing produced since is lost while the
process lives.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import structlog

from edge_agent.state_files import open_sqlite

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    topic: str
    payload: bytes
    is_ack: bool


class Outbox:
    def __init__(self, path: Path | None, *, max_telemetry: int = 500) -> None:
        self._max_telemetry = max_telemetry
        self._memory: list[Pending] = []  # used only when the disk fails
        self.evicted = 0
        self.disk_error: str | None = None
        self._db = open_sqlite(path, synchronous="FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " topic TEXT NOT NULL, payload BLOB NOT NULL, is_ack INTEGER NOT NULL)"
        )
        self._count: int = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self._memory_seq = 0

    def __len__(self) -> int:
        return self._count + len(self._memory)

    def put(self, topic: str, payload: bytes, *, is_ack: bool) -> None:
        """Keep one message for later; evict the oldest telemetry past the bound."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO outbox (topic, payload, is_ack) VALUES (?, ?, ?)", (topic, payload, int(is_ack))
                )
                evicted = 0
                if not is_ack:
                    evicted = self._db.execute(
                        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE is_ack = 0"
                        " ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                        (self._max_telemetry,),
                    ).rowcount
            self._count += 1 - evicted
            self.evicted += evicted
            self.disk_error = None
        except sqlite3.Error as exc:
            self._keep_in_memory(topic, payload, is_ack=is_ack, error=exc)

    def _keep_in_memory(self, topic: str, payload: bytes, *, is_ack: bool, error: sqlite3.Error) -> None:
        if self.disk_error is None:
            log.error("outbox cannot write to disk; holding messages in memory", error=str(error))
        self.disk_error = str(error)
        self._memory_seq += 1
        self._memory.append(Pending(-self._memory_seq, topic, payload, is_ack))
        telemetry = [p for p in self._memory if not p.is_ack]
        if len(telemetry) > self._max_telemetry:
            self._memory.remove(telemetry[0])
            self.evicted += 1

    def peek(self, limit: int = 100) -> list[Pending]:
        """The oldest waiting messages, in the order they were produced (disk before memory:
        the memory holds only what came after the disk failed)."""
        rows = self._db.execute(
            "SELECT seq, topic, payload, is_ack FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        items = [Pending(seq, topic, bytes(payload), bool(is_ack)) for seq, topic, payload, is_ack in rows]
        return items + self._memory[: max(0, limit - len(items))]

    def done(self, item: Pending) -> None:
        """`item` reached the broker: forget it."""
        if item.seq < 0:
            self._memory.remove(item)
            return
        try:
            with self._db:
                deleted = self._db.execute("DELETE FROM outbox WHERE seq = ?", (item.seq,)).rowcount
            self._count -= deleted
        except sqlite3.Error as exc:
            # Not deleted: it will be sent again after a restart, which QoS 1 receivers handle.
            log.warning("outbox cannot delete a sent message", seq=item.seq, error=str(exc))

    def drain(self) -> list[Pending]:
        """Everything waiting, oldest first, and forget it (for tests and inspection)."""
        items = self.peek(limit=len(self) + 1)
        for item in items:
            self.done(item)
        return items

    def close(self) -> None:
        self._db.close()
