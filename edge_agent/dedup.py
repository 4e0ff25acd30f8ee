"""Which payments this device has already announced (and which commands it has run), kept
across restarts.

A merchant must hear each payment once. Broker redelivery (QoS 1), server retries and replays
all arrive as the same `payment_id`; this window remembers the last `capacity` ids for
`max_age_s` (defaults: 10,000 ids, 24 h: a busy shop takes a few hundred payments a day, and
the server never retries past an announce's TTL). Commands use a second window by
`command_id`, so a redelivered reboot does not reboot twice. The window lives in SQLite (standard library,
on every board) and in memory for the lookup on the hot path.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import OrderedDict
from pathlib import Path


class SeenIds:
    def __init__(self, path: Path | None, *, capacity: int = 10_000, max_age_s: int = 24 * 3600) -> None:
        self._capacity = capacity
        self._max_age_ms = max_age_s * 1000
        self._seen: OrderedDict[str, int] = OrderedDict()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (payment_id TEXT PRIMARY KEY, at_ms INTEGER)")
        for payment_id, at_ms in self._db.execute("SELECT payment_id, at_ms FROM seen ORDER BY at_ms"):
            self._seen[payment_id] = at_ms
        self._lock = asyncio.Lock()

    def __contains__(self, payment_id: str) -> bool:
        return payment_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def _store(self, payment_id: str, now_ms: int, evicted: list[str]) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?)", (payment_id, now_ms))
            self._db.executemany("DELETE FROM seen WHERE payment_id = ?", [(e,) for e in evicted])

    def newest(self) -> tuple[str, int] | None:
        """The id remembered last and when, if any."""
        if not self._seen:
            return None
        payment_id = next(reversed(self._seen))
        return payment_id, self._seen[payment_id]

    async def remember(self, payment_id: str, now_ms: int) -> bool:
        """Record `payment_id`; True if it is new, False if it was seen within the window."""
        async with self._lock:
            if payment_id in self._seen:
                return False
            self._seen[payment_id] = now_ms
            evicted: list[str] = []
            while self._seen and (
                len(self._seen) > self._capacity or next(iter(self._seen.values())) < now_ms - self._max_age_ms
            ):
                evicted.append(self._seen.popitem(last=False)[0])
            # Written before the announcement plays: a power cut between the two loses one
            # play rather than repeating it (at most once per device beats a double "到账").
            await asyncio.to_thread(self._store, payment_id, now_ms, evicted)
            return True

    def close(self) -> None:
        self._db.close()
