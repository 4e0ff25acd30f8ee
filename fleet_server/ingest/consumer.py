"""MQTT → validated → batched into PostgreSQL.

Every uplink message (hello, health, event, presence) is validated against its v1 model by the
link's router, and its signature checked (`ReportAuthority`); a bad or forged one goes to the
quarantine and the ingest goes on. Good ones wait in a bounded queue; a writer flushes them in
one transaction per batch (COPY for the append-only tables, one set-based upsert per table for
the rest).

No message can stop the stream (issue 22). A batch the database refuses for the data's sake
(`db.failures`) is split until the message(s) at fault are alone (`db.isolate.write_apart`):
the rest commit, each bad one is quarantined with PostgreSQL's reason and acknowledged. Only an
outage (connection lost, server shutting down, out of resources) keeps a batch for retry.

An offline presence counts only for the connection the fleet saw come online: one that names
another session (an old will, replayed) is quarantined as `session`, and the device stays as it is.

Nothing acknowledged is lost. With `ack_after_commit` (the default on an external broker) a
message is acknowledged to the broker only after the transaction holding it commits, and the
link asks the broker (MQTT 5 Receive Maximum) for no more unacknowledged messages than the queue
holds. When the database is away the writer keeps its batch and retries with backoff, nothing is
acknowledged, the broker stops sending once the window is full and keeps the rest in the
persistent session; a crash before the commit means the broker sends those messages again. The
broker must be allowed to queue that much: see `deploy/mosquitto.conf`. Delivery is therefore at
least once: after a reconnect mid-batch a few messages can be stored twice.

The embedded amqtt broker gives up on a QoS 1 message whose PUBACK takes more than 5 s (and
drops it), so there the ingest acknowledges on receipt and relies on its in-memory queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from psycopg_pool import AsyncConnectionPool

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import UP_MODELS, Event, Health, Presence, Report
from fleet_server.db import failures
from fleet_server.db.fetch import fetch_rows
from fleet_server.identity.reports import ReportAuthority
from fleet_server.ingest import queries
from fleet_server.ingest.batch import IngestPolicy, Received, write_batch
from fleet_server.quarantine.store import Quarantine
from mqtt_link.backoff import Backoff
from mqtt_link.link import Session
from mqtt_link.routing import Inbound, Router, RouteStats, consumer_link
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

# Devices whose implausible clock is logged once each, up to this many before the set starts over.
_CLOCK_LOG_DEVICES = 10_000

INGESTED_KINDS = (topics.Up.HELLO, topics.Up.HEALTH, topics.Up.EVENT, topics.Up.PRESENCE)


@dataclass(slots=True)
class IngestStats:
    inbound: RouteStats = field(default_factory=RouteStats)  # received and rejected, by the router
    written: int = 0
    batches: int = 0
    write_failures: int = 0  # a batch kept for retry: the database was away
    poisoned: int = 0  # refused by the database for the data's sake: quarantined
    stale_presences: int = 0  # an offline presence of a connection other than the current one
    # Health and events whose device time was implausible (unset, or more than a day ahead):
    # filed at their time of receipt instead (`batch.implausible_time`).
    clock_refused: int = 0
    # Stored, but the connection that brought them had gone before the acknowledgement: the
    # broker sends them again and they are stored twice.
    acks_void: int = 0

    @property
    def received(self) -> int:
        return self.inbound.received

    @property
    def rejected(self) -> int:
        return self.inbound.rejected


class Ingest(Component):
    def __init__(
        self,
        pool: AsyncConnectionPool,
        endpoint: BrokerEndpoint,
        *,
        client_id: str,
        batch_size: int = 500,
        flush_s: float = 0.2,
        queue_size: int = 20_000,
        policy: IngestPolicy | None = None,
        ack_after_commit: bool = True,
        share_group: str | None = None,
        quarantine: Quarantine | None = None,
        authority: ReportAuthority | None = None,
    ) -> None:
        """`authority`: checks each report's signature (None: every report is believed)."""
        self._pool = pool
        self.quarantine = quarantine or Quarantine(pool)
        self._sessions: dict[str, str | None] = {}
        self._clock_logged: set[str] = set()  # devices whose implausible time was logged (once each)
        self.ack_after_commit = ack_after_commit
        self._policy = policy or IngestPolicy()
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=queue_size)
        self.router = Router(
            "ingest",
            topics.Direction.UP,
            on_reject=self.quarantine.hook("ingest"),
            verify=authority.verify if authority is not None else None,
        )
        for kind in INGESTED_KINDS:
            # Presence is retained: an empty payload is a retained copy cleared, not a bad message.
            self.router.route(kind, UP_MODELS[kind], self._take, retained=kind is topics.Up.PRESENCE)
        self.stats = IngestStats(self.router.stats)
        self._link = consumer_link(
            self.router,
            endpoint,
            client_id=client_id,
            share_group=share_group,
            manual_ack=ack_after_commit,
            # MQTT 5 lets us cap what is in flight to us unacknowledged at what the queue holds.
            session=Session(mqtt_version="5", receive_maximum=min(queue_size, 65_535)) if ack_after_commit else None,
        )

    async def _start(self, stack: AsyncExitStack) -> None:
        spawn(stack, self._write_loop(), name="ingest-writer")
        stack.push_async_callback(self._let_queue_drain)
        await stack.enter_async_context(self._link)

    async def _let_queue_drain(self) -> None:
        # After the link is closed: what is already queued gets a moment to reach the database.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=5.0)

    async def wait_connected(self, timeout_s: float) -> None:
        await self._link.wait_connected(timeout_s)

    async def _take(self, inbound: Inbound[Report]) -> None:
        received = Received(datetime.now(tz=UTC), inbound.message, inbound.delivery)
        if isinstance(received.message, Health | Event) and (why := received.time_refused) is not None:
            self._count_clock_refused(received, why)
        # Blocks when the queue is full: back-pressure onto the broker, never a drop.
        await self._queue.put(received)

    def _count_clock_refused(self, received: Received, why: str) -> None:
        self.stats.clock_refused += 1
        device = received.message.device_id
        if device in self._clock_logged:
            return
        if len(self._clock_logged) >= _CLOCK_LOG_DEVICES:  # a fleet with unset clocks: log again later
            self._clock_logged.clear()
        self._clock_logged.add(device)
        log.warning(
            "device time not used as the telemetry time; filed at receipt",
            device_id=device,
            device_ts=received.message.ts,
            received_at=received.received_at.isoformat(),
            reason=why,
        )

    async def _stale_presences(self, batch: list[Received]) -> list[Received]:
        """The offline presences of `batch` that name another session than the one their device
        came online on (judged in arrival order; the sessions of devices not seen by this
        process are read from the database). An online presence starts a session; an offline
        one naming none counts as before (devices that name no sessions)."""
        presences = [item.message for item in batch if isinstance(item.message, Presence)]
        unknown = {p.device_id for p in presences if not p.online and p.session} - self._sessions.keys()
        if unknown:
            rows = await fetch_rows(self._pool, queries.PRESENCE_SESSIONS, (sorted(unknown),))
            self._sessions.update(dict.fromkeys(unknown))
            self._sessions.update(dict(rows))
        stale = []
        for item in batch:
            msg = item.message
            if not isinstance(msg, Presence):
                continue
            if msg.online:
                self._sessions[msg.device_id] = msg.session
            elif msg.session is not None and self._sessions.get(msg.device_id) not in (None, msg.session):
                stale.append(item)
        return stale

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

        async def write(part: Sequence[Received]) -> None:
            await write_batch(self._pool, list(part), self._policy)

        async def wait_out(exc: Exception) -> None:
            self.stats.write_failures += 1
            delay = backoff.next_delay()
            log.warning(
                "ingest write failed; batch kept for retry", error=failures.describe(exc), retry_in_s=round(delay, 2)
            )
            await asyncio.sleep(delay)

        while True:
            batch = await self._next_batch()
            while True:
                try:
                    stale = await self._stale_presences(batch)
                    break
                except Exception as error:  # noqa: BLE001 - an outage is waited out, anything else logged
                    if not failures.is_transient(error):
                        # Never a reason to stop the stream: take the presences as they come.
                        log.error("presence sessions not read", error=failures.describe(error))  # noqa: TRY400
                        stale = []
                        break
                    await wait_out(error)
            ids = {id(item) for item in stale}
            poisoned = await self.quarantine.store_apart(
                "ingest",
                [i for i in batch if id(i) not in ids],
                write,
                delivery_of=lambda item: item.delivery,
                on_transient=wait_out,
            )
            for item in stale:
                self.stats.stale_presences += 1
                assert isinstance(item.message, Presence)  # noqa: S101 - only presences are stale
                if item.delivery is not None:
                    why = f"offline presence of session {item.message.session!r}, not the one its device is online on"
                    await self.quarantine.hold("ingest", item.delivery, "session", why)
            backoff.reset()
            self.stats.poisoned += poisoned
            for item in batch:
                receipt = item.delivery.receipt if item.delivery is not None else None
                if receipt is not None and not receipt.ack():
                    self.stats.acks_void += 1
            self.stats.written += len(batch) - poisoned - len(stale)
            self.stats.batches += 1
            for _ in batch:
                self._queue.task_done()
