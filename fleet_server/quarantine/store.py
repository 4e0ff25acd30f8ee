"""The quarantine: what a consumer could not take, kept, counted and shown, never retried.

    quarantine = Quarantine(pool)
    router = Router("ingest", Direction.UP, on_reject=quarantine.hook("ingest"))
    ...
    held = await quarantine.store_apart("ingest", batch, write, delivery_of=..., on_transient=wait)

A message is held once per consumer however often the broker sends it again: its row counts
the copies. Holding waits out a database outage (backoff, up to `HOLD_PATIENCE_S`), so a message
is acknowledged to the broker only once it is held, or, if the database stays away, once it is
logged in full. Every text that goes into the row (topic, error) is made storable first: the
error may quote the very value PostgreSQL refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

import structlog
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols import topics
from firmware_protocols.errors import MessageError
from fleet_server.db import failures
from fleet_server.db.fetch import execute, fetch_dicts, fetch_row
from fleet_server.db.isolate import write_apart
from fleet_server.quarantine import queries
from mqtt_link.backoff import Backoff
from mqtt_link.link import Delivery
from mqtt_link.routing import Rejected, RejectHook

log = structlog.get_logger(__name__)

T = TypeVar("T")

Reason = Literal["topic", "payload", "signature", "session", "store"]
REASONS: tuple[Reason, ...] = ("topic", "payload", "signature", "session", "store")
# Kept of each payload; `payload_bytes` says how long it was.
MAX_KEPT_BYTES = 64 * 1024
MAX_ERROR_CHARS = 1000
HOLD_PATIENCE_S = 60.0


def storable_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` as PostgreSQL text can hold it: NUL written out, unencodable characters replaced."""
    clean = text.replace("\x00", "\\u0000").encode("utf-8", "replace").decode("utf-8")
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


class Held(BaseModel):
    """One held message, as the API shows it: the payload's head as text, and as base64."""

    id: int
    consumer: str
    topic: str
    device_id: str | None
    reason: str
    error: str
    payload_bytes: int
    copies: int
    first_at: datetime
    last_at: datetime
    preview: str
    payload_b64: str


class HeldCount(BaseModel):
    consumer: str
    reason: str
    messages: int
    copies: int


class Poisoner(BaseModel):
    device_id: str
    messages: int
    reasons: list[str]
    last_at: datetime


@dataclass(slots=True)
class QuarantineStats:
    """What this process held, by (consumer, reason); the table has every process's."""

    held: Counter[tuple[str, str]]
    not_held: int = 0  # the database stayed away: logged in full instead


def _device_of(topic: str) -> str | None:
    try:
        return topics.parse(topic).device_id
    except MessageError:
        return None


class Quarantine:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self.stats = QuarantineStats(Counter())

    def hook(self, consumer: str) -> RejectHook:
        """The reject hook of `consumer`'s router: every refused message is held."""

        async def hold_rejected(rejected: Rejected) -> None:
            await self.hold(consumer, rejected.delivery, rejected.stage, str(rejected.error))

        return hold_rejected

    async def hold(self, consumer: str, delivery: Delivery, reason: Reason, error: str) -> None:
        """Keep `delivery` with why `consumer` could not take it; returns once it is stored (or,
        with the database away past patience, logged in full)."""
        payload = bytes(delivery.payload)
        topic = storable_text(delivery.topic, 1000)
        digest = hashlib.sha256(b"\0".join((consumer.encode(), topic.encode(), payload))).digest()
        now = datetime.now(tz=UTC)
        row = (
            digest,
            consumer,
            topic,
            _device_of(delivery.topic),
            reason,
            storable_text(error),
            payload[:MAX_KEPT_BYTES],
            len(payload),
            now,
            now,
        )
        backoff = Backoff(0.2, 5.0)
        deadline = asyncio.get_running_loop().time() + HOLD_PATIENCE_S
        while True:
            try:
                copies_row = await fetch_row(self._pool, queries.HOLD, row)
                break
            except Exception as exc:  # noqa: BLE001 - any failure: retry an outage, else log
                if not failures.is_transient(exc) or asyncio.get_running_loop().time() > deadline:
                    self.stats.not_held += 1
                    log.error(  # noqa: TRY400 - the failure is described; no traceback wanted
                        "message could not be quarantined; logged instead",
                        consumer=consumer,
                        topic=topic,
                        reason=reason,
                        error=storable_text(error),
                        failure=failures.describe(exc),
                        payload_b64=base64.b64encode(payload[:MAX_KEPT_BYTES]).decode(),
                    )
                    return
                await asyncio.sleep(backoff.next_delay())
        copies = copies_row[0] if copies_row else 1
        self.stats.held[consumer, reason] += 1
        if copies == 1:  # logged once; a copy the broker sends again only counts
            log.warning(
                "message quarantined",
                consumer=consumer,
                topic=topic,
                reason=reason,
                error=storable_text(error, 300),
                payload_bytes=len(payload),
            )

    async def store_apart(
        self,
        consumer: str,
        items: Sequence[T],
        write: Callable[[Sequence[T]], Awaitable[object]],
        *,
        delivery_of: Callable[[T], Delivery | None],
        on_transient: Callable[[Exception], Awaitable[None]],
    ) -> int:
        """Write `items` apart around what the database refuses (`db.isolate.write_apart`), and
        hold each refused one as `store` with PostgreSQL's reason; returns how many were held."""
        poisoned = await write_apart(items, write, on_transient=on_transient)
        for item, exc in poisoned:
            delivery = delivery_of(item)
            if delivery is not None:
                await self.hold(consumer, delivery, "store", failures.describe(exc))
        return len(poisoned)

    async def recent(self, *, device_id: str | None = None, consumer: str | None = None, limit: int = 50) -> list[Held]:
        rows = await fetch_dicts(
            self._pool, queries.RECENT, {"device_id": device_id, "consumer": consumer, "limit": limit}
        )
        return [_held(row) for row in rows]

    async def one(self, held_id: int) -> Held | None:
        rows = await fetch_dicts(self._pool, queries.ONE, (held_id,))
        return _held(rows[0]) if rows else None

    async def counts(self) -> list[HeldCount]:
        return [HeldCount.model_validate(row) for row in await fetch_dicts(self._pool, queries.COUNTS)]

    async def poisoners(self, *, since: datetime, min_messages: int) -> list[Poisoner]:
        """Devices that sent at least `min_messages` held messages since `since`."""
        rows = await fetch_dicts(self._pool, queries.POISONERS, {"since": since, "min": min_messages})
        return [Poisoner.model_validate(row) for row in rows]

    async def purge(
        self, *, ids: list[int] | None = None, device_id: str | None = None, before: datetime | None = None
    ) -> int:
        """Delete held messages (by ids, of one device, held before a time; all three narrow)."""
        return await execute(self._pool, queries.PURGE, {"ids": ids, "device_id": device_id, "before": before})


def _held(row: dict[str, object]) -> Held:
    head = row.pop("head")
    assert isinstance(head, bytes)  # noqa: S101 - bytea comes back as bytes
    return Held.model_validate(
        {
            **row,
            "preview": storable_text(head.decode("utf-8", "replace"), 512),
            "payload_b64": base64.b64encode(head).decode(),
        }
    )
