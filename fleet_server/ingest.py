"""MQTT → validated → batched into PostgreSQL.

Every uplink message (hello, health, event, presence) is validated against its v1 model; a bad
one is logged with its topic and dropped, and the ingest goes on. Good ones wait in a bounded
queue; a writer flushes them in one transaction per batch (COPY for health rows). When the
database is away the writer keeps its batch and retries, the queue fills, and the receive loop
stops taking messages, so the broker holds them (persistent session) instead of us losing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import aiomqtt
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from edge_agent.link import Backoff, Link
from edge_agent.tasks import cancel_and_wait
from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.errors import MessageError
from firmware_protocols.messages import UP_MODELS, Event, Health, Hello, Message, Presence, parse_payload

log = structlog.get_logger(__name__)

INGESTED_KINDS = (topics.Up.HELLO, topics.Up.HEALTH, topics.Up.EVENT, topics.Up.PRESENCE)


@dataclass(frozen=True, slots=True)
class Received:
    received_at: datetime
    message: Message


@dataclass(slots=True)
class IngestStats:
    received: int = 0
    rejected: int = 0
    written: int = 0
    batches: int = 0
    write_failures: int = 0


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class Ingest:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        endpoint: BrokerEndpoint,
        *,
        client_id: str,
        batch_size: int = 500,
        flush_s: float = 0.2,
        queue_size: int = 20_000,
    ) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=queue_size)
        self.stats = IngestStats()
        self._writer: asyncio.Task[None] | None = None
        self._link = Link(
            endpoint,
            client_id=client_id,
            subscriptions=[topics.fleet_uplink_filter(kind) for kind in INGESTED_KINDS],
            on_message=self._on_message,
        )

    async def __aenter__(self) -> Self:
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")
        await self._link.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._link.close()
        # Give what is already queued a moment to reach the database before stopping.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=5.0)
        if self._writer is not None:
            await cancel_and_wait(self._writer)

    async def wait_connected(self, timeout_s: float) -> None:
        await self._link.wait_connected(timeout_s)

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        self.stats.received += 1
        try:
            parsed = topics.parse(topic)
            if parsed.direction is not topics.Direction.UP or parsed.kind not in INGESTED_KINDS:
                raise MessageError(f"topic {topic!r} is not ingested here")
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            model = parse_payload(UP_MODELS[topics.Up(parsed.kind)], payload, topic=topic)
            if model.device_id != parsed.device_id:
                raise MessageError(f"{topic}: payload device_id {model.device_id!r} does not match the topic")
        except MessageError as exc:
            self.stats.rejected += 1
            log.warning("malformed device message dropped", topic=topic, error=str(exc))
            return
        # Blocks when the queue is full: back-pressure onto the broker, never a drop.
        await self._queue.put(Received(datetime.now(tz=UTC), model))

    async def _next_batch(self) -> list[Received]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self._flush_s
        while len(batch) < self._batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        return batch

    async def _write_loop(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            batch = await self._next_batch()
            while True:
                try:
                    await write_batch(self._pool, batch)
                    break
                except psycopg.Error as exc:
                    self.stats.write_failures += 1
                    delay = backoff.next_delay()
                    log.warning(
                        "ingest write failed; batch kept for retry",
                        rows=len(batch),
                        error=str(exc),
                        retry_in_s=round(delay, 2),
                    )
                    await asyncio.sleep(delay)
            backoff.reset()
            self.stats.written += len(batch)
            self.stats.batches += 1
            for _ in batch:
                self._queue.task_done()


async def write_batch(pool: AsyncConnectionPool, batch: list[Received]) -> None:
    """Write one batch in one transaction."""
    seen: dict[str, datetime] = {}
    hellos: list[tuple[object, ...]] = []
    presences: list[tuple[object, ...]] = []
    events: list[tuple[object, ...]] = []
    health_rows: list[tuple[object, ...]] = []
    for item in batch:
        msg = item.message
        seen[msg.device_id] = max(seen.get(msg.device_id, item.received_at), item.received_at)
        if isinstance(msg, Hello):
            hellos.append((msg.device_id, msg.serial, msg.model, msg.firmware, msg.boot_id, item.received_at))
        elif isinstance(msg, Presence):
            presences.append((msg.device_id, msg.online, msg.reason, item.received_at))
        elif isinstance(msg, Event):
            events.append((msg.device_id, _at(msg.ts), item.received_at, msg.kind, json.dumps(msg.detail)))
        elif isinstance(msg, Health):
            health_rows.append(
                (
                    msg.device_id,
                    _at(msg.ts),
                    item.received_at,
                    msg.uptime_s,
                    msg.rssi_dbm,
                    msg.volume,
                    msg.queue_depth,
                    msg.played_total,
                    msg.mem_rss_kb,
                    msg.model_dump_json(),
                )
            )
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO devices (device_id, last_seen) VALUES (%s, %s)"
            " ON CONFLICT (device_id) DO UPDATE SET last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen)",
            sorted(seen.items()),
        )
        if hellos:
            await cur.executemany(
                "UPDATE devices SET serial = %s, model = %s, firmware = %s, boot_id = %s, hello_at = %s"
                " WHERE device_id = %s",
                [(s, m, f, b, at, d) for d, s, m, f, b, at in hellos],
            )
        if presences:
            # Ordered by arrival at the server: a last will carries the time its device connected,
            # so the device's own clock cannot order it against the "online" that followed.
            await cur.executemany(
                "UPDATE devices SET online = %s, presence_reason = %s, presence_at = %s"
                " WHERE device_id = %s AND (presence_at IS NULL OR presence_at <= %s)",
                [(online, reason, at, d, at) for d, online, reason, at in presences],
            )
        if events:
            await cur.executemany(
                "INSERT INTO device_events (device_id, ts, received_at, kind, detail) VALUES (%s, %s, %s, %s, %s)",
                events,
            )
        if health_rows:
            async with cur.copy(
                "COPY device_health (device_id, ts, received_at, uptime_s, rssi_dbm, volume,"
                " queue_depth, played_total, mem_rss_kb, payload) FROM STDIN"
            ) as copy:
                for row in health_rows:
                    await copy.write_row(row)
