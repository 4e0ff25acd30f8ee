"""The device's way out: every message to the servers goes through an `Uplink`.

`DeviceUplink` publishes a message at once while the link is up and nothing older waits;
otherwise it goes into the on-disk outbox (`outbox.py`), which the flusher empties in order once
the link is back. At every connect the device first says who it is: presence (retained, online)
and hello. The other parts take the `Uplink` port; their tests pass a `RecordingUplink`.

A device that holds a secret signs everything it sends (`firmware_protocols.reports`), here, at
the one way out; messages waiting in the outbox were signed when they were made. Each
connection is a session with a fresh random name, carried by its online presence and by the
will the link sets for it (`will()`, asked for at every connect), so the servers take an
offline only for the connection they saw come online.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Literal, Protocol

import aiomqtt
import structlog

from edge_agent.clock import Clock
from edge_agent.outbox import Outbox
from firmware_protocols import topics
from firmware_protocols.messages import Event, Hello, Presence, Report
from firmware_protocols.reports import signed_payload
from mqtt_link.errors import LinkDown
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

# A stopping agent waits this long to say goodbye, then goes anyway: its last will says "lost".
GOODBYE_TIMEOUT_S = 2.0
# The flusher reads the outbox this many messages at a time: small enough to stay in memory on
# a board, large enough that a day offline drains in a few reads.
FLUSH_BATCH = 100

PresenceReason = Literal["connected", "shutdown", "lost"]


class Uplink(Protocol):
    """Where a part's messages to the servers go."""

    async def send(self, kind: topics.Up, message: Report) -> None: ...

    async def event(self, kind: str, **detail: object) -> None:
        """Send an `up/event` of `kind` with `detail`, stamped now."""
        ...


class Publisher(Protocol):
    """What the uplink needs of the MQTT link (`mqtt_link.link.Link`)."""

    connected: asyncio.Event

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...


def event_now(device_id: str, clock: Clock, kind: str, detail: dict[str, object]) -> Event:
    """An `up/event` of `kind` stamped with the device's time now."""
    return Event(device_id=device_id, ts=clock.now_ms(), kind=kind, detail=detail)


class DeviceUplink(Component):
    def __init__(
        self,
        device_id: str,
        link: Publisher,
        outbox: Outbox,
        clock: Clock,
        *,
        hello: Callable[[], Hello],
        report_key: bytes | None = None,
    ) -> None:
        """`hello`: the device's hello as of now (firmware, slot, boot), sent at every connect.
        `report_key`: the key this device signs its reports with (None: it has no secret and
        sends them unsigned, as protocol v1 devices before signing did)."""
        self.device_id = device_id
        self.outbox = outbox
        self.session = secrets.token_urlsafe(12)
        self._link = link
        self._clock = clock
        self._hello = hello
        self._key = report_key
        self._wakeup = asyncio.Event()
        self._log = log.bind(device_id=device_id)

    @property
    def signs(self) -> bool:
        return self._key is not None

    def payload(self, message: Report) -> bytes:
        """What goes on the wire: the message, signed if this device signs."""
        return message.to_json() if self._key is None else signed_payload(self._key, message)

    def _presence(self, *, online: bool, reason: PresenceReason) -> bytes:
        message = Presence(
            device_id=self.device_id, ts=self._clock.now_ms(), online=online, reason=reason, session=self.session
        )
        return self.payload(message)

    def will(self) -> aiomqtt.Will:
        """The last will of the connection about to be made: a new session begins with it."""
        self.session = secrets.token_urlsafe(12)
        return aiomqtt.Will(
            topics.up(self.device_id, topics.Up.PRESENCE),
            self._presence(online=False, reason="lost"),
            qos=1,
            retain=True,
        )

    async def _start(self, stack: AsyncExitStack) -> None:
        stack.callback(self.outbox.close)
        spawn(stack, self._flush_loop(), name=f"outbox:{self.device_id}")

    async def send(self, kind: topics.Up, message: Report) -> None:
        """Publish now if the link is up and nothing older waits, else keep it for the flusher."""
        topic = topics.up(self.device_id, kind)
        payload = self.payload(message)
        if not len(self.outbox) and self._link.connected.is_set():
            try:
                await self._link.publish(topic, payload)
            except LinkDown:
                pass
            else:
                return
        self.outbox.put(topic, payload, is_ack=kind is topics.Up.ACK)
        self._wakeup.set()

    async def event(self, kind: str, **detail: object) -> None:
        await self.send(topics.Up.EVENT, event_now(self.device_id, self._clock, kind, detail))

    async def on_connect(self) -> None:
        """Presence and hello first, then whatever waited in the outbox."""
        await self._link.publish(
            topics.up(self.device_id, topics.Up.PRESENCE), self._presence(online=True, reason="connected"), retain=True
        )
        await self._link.publish(topics.up(self.device_id, topics.Up.HELLO), self.payload(self._hello()))
        self._wakeup.set()

    async def goodbye(self) -> None:
        """Say the device is shutting down, so the fleet sees a shutdown, not a lost device."""
        with contextlib.suppress(LinkDown, TimeoutError):
            await asyncio.wait_for(
                self._link.publish(
                    topics.up(self.device_id, topics.Up.PRESENCE),
                    self._presence(online=False, reason="shutdown"),
                    retain=True,
                ),
                timeout=GOODBYE_TIMEOUT_S,
            )

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            sent = 0
            try:
                while self._link.connected.is_set() and (batch := self.outbox.peek(FLUSH_BATCH)):
                    for item in batch:
                        await self._link.publish(item.topic, item.payload)
                        self.outbox.done(item)
                        sent += 1
            except LinkDown as exc:
                self._log.info("outbox flush paused; link down", sent=sent, waiting=len(self.outbox), error=str(exc))
                continue
            if sent:
                self._log.info("outbox flushed", messages=sent)


class RecordingUplink:
    """An uplink that keeps what it is given, in order: the fake for the parts' tests."""

    def __init__(self, device_id: str, clock: Clock) -> None:
        self.device_id = device_id
        self.sent: list[tuple[topics.Up, Report]] = []
        self._clock = clock

    async def send(self, kind: topics.Up, message: Report) -> None:
        self.sent.append((kind, message))

    async def event(self, kind: str, **detail: object) -> None:
        await self.send(topics.Up.EVENT, event_now(self.device_id, self._clock, kind, detail))

    def of(self, kind: topics.Up) -> list[Report]:
        """What was sent of `kind`, oldest first."""
        return [message for sent_kind, message in self.sent if sent_kind is kind]
