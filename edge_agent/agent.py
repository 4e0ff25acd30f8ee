"""The agent: a device's link, announcer and health reporting, as one async resource.

    async with EdgeAgent(config, sink=WavFileSink(out), voice=VoicePack.builtin(),
                         modem=SimulatedModem()) as agent:
        await agent.wait_connected(10)
        ...

Announce path (kept short, measured in bench/): receive → validate → verify signature → check
TTL → remember payment id → queue → render clips → play → ack. The receive side never waits for
playback, so a long announcement never stalls the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import aiomqtt
import structlog

from edge_agent.audio import AudioError, AudioSink, VoicePack
from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.dedup import SeenPayments
from edge_agent.hardware import Modem
from edge_agent.link import Backoff, Link, LinkDown
from edge_agent.outbox import Outbox
from edge_agent.speech import announcement_text
from edge_agent.tasks import cancel_and_wait
from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.errors import MessageError, SignatureError
from firmware_protocols.messages import (
    Ack,
    AckStatus,
    Announce,
    Event,
    Health,
    Hello,
    Message,
    Presence,
    parse_payload,
)
from firmware_protocols.signing import AnnounceVerifier, decode_public_key

log = structlog.get_logger(__name__)

CAPABILITIES = ["announce.v1", "voice.zh_cn"]


@dataclass(slots=True)
class AgentStats:
    received: int = 0
    played: int = 0
    duplicates: int = 0
    expired: int = 0
    refused: int = 0
    bad_messages: int = 0
    play_failures: int = 0


@dataclass(frozen=True, slots=True)
class _Playback:
    announce: Announce
    text: str
    received_at: int


def _rss_kb() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * 4


class EdgeAgent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        sink: AudioSink,
        voice: VoicePack,
        modem: Modem,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.device_id = config.device_id
        self.stats = AgentStats()
        self._sink = sink
        self._voice = voice
        self._modem = modem
        self._clock = clock or SystemClock()
        self._verifier = AnnounceVerifier([decode_public_key(k) for k in config.server_keys])
        self._seen = SeenPayments(config.state_dir / "seen-payments.sqlite3")
        self._outbox = Outbox()
        self._queue: asyncio.Queue[_Playback] = asyncio.Queue()
        self._boot_id = uuid.uuid4().hex[:12]
        self._started_ms = self._clock.now_ms()
        self._tasks: list[asyncio.Task[None]] = []
        self._log = log.bind(device_id=self.device_id)
        self._link = Link(
            BrokerEndpoint.from_url(config.broker_url),
            client_id=self.device_id,
            subscriptions=[topics.device_downlink_filter(self.device_id)],
            on_message=self._on_message,
            on_connect=self._on_connect,
            will=aiomqtt.Will(
                topics.up(self.device_id, topics.Up.PRESENCE),
                self._presence(online=False, reason="lost").to_json(),
                qos=1,
                retain=True,
            ),
            keepalive_s=config.keepalive_s,
            backoff=Backoff(config.reconnect_initial_s, config.reconnect_max_s),
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._link.__aenter__()
        self._tasks = [
            asyncio.create_task(self._play_loop(), name=f"player:{self.device_id}"),
            asyncio.create_task(self._health_loop(), name=f"health:{self.device_id}"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Say goodbye so the fleet sees a shutdown, not a lost device.
        with contextlib.suppress(LinkDown, TimeoutError):
            await asyncio.wait_for(
                self._link.publish(
                    topics.up(self.device_id, topics.Up.PRESENCE),
                    self._presence(online=False, reason="shutdown").to_json(),
                    retain=True,
                ),
                timeout=2.0,
            )
        for task in self._tasks:
            await cancel_and_wait(task)
        await self._link.close()
        self._seen.close()

    async def wait_connected(self, timeout_s: float) -> None:
        await self._link.wait_connected(timeout_s)

    @property
    def connected(self) -> bool:
        return self._link.connected.is_set()

    # -- uplink ----------------------------------------------------------------------------

    def _presence(self, *, online: bool, reason: Literal["connected", "shutdown", "lost"]) -> Presence:
        return Presence(device_id=self.device_id, ts=self._clock.now_ms(), online=online, reason=reason)

    async def _send(self, kind: topics.Up, message: Message, *, retain: bool = False) -> None:
        topic = topics.up(self.device_id, kind)
        payload = message.to_json()
        try:
            await self._link.publish(topic, payload, retain=retain)
        except LinkDown:
            self._outbox.put(topic, payload, is_ack=kind is topics.Up.ACK)

    async def _on_connect(self) -> None:
        await self._link.publish(
            topics.up(self.device_id, topics.Up.PRESENCE),
            self._presence(online=True, reason="connected").to_json(),
            retain=True,
        )
        hello = Hello(
            device_id=self.device_id,
            ts=self._clock.now_ms(),
            model=self.config.model,
            serial=self.config.serial or self.device_id,
            firmware=self.config.firmware,
            boot_id=self._boot_id,
            capabilities=CAPABILITIES,
        )
        await self._link.publish(topics.up(self.device_id, topics.Up.HELLO), hello.to_json())
        pending = self._outbox.drain()
        for i, item in enumerate(pending):
            try:
                await self._link.publish(item.topic, item.payload)
            except LinkDown:
                self._outbox.requeue(pending[i:])
                raise
        if pending:
            self._log.info("outbox flushed", messages=len(pending))

    async def _health_loop(self) -> None:
        while True:
            await self._send(topics.Up.HEALTH, await self.health())
            await asyncio.sleep(self.config.health_interval_s)

    async def health(self) -> Health:
        return Health(
            device_id=self.device_id,
            ts=self._clock.now_ms(),
            uptime_s=(self._clock.now_ms() - self._started_ms) // 1000,
            rssi_dbm=await self._modem.signal_dbm(),
            volume=self.config.volume,
            queue_depth=self._queue.qsize(),
            played_total=self.stats.played,
            mem_rss_kb=_rss_kb(),
        )

    async def _ack(self, announce: Announce, status: AckStatus, received_at: int, **extra: object) -> None:
        ack = Ack.model_validate(
            {
                "device_id": self.device_id,
                "ts": self._clock.now_ms(),
                "payment_id": announce.payment_id,
                "status": status,
                "received_at": received_at,
                **extra,
            }
        )
        await self._send(topics.Up.ACK, ack)

    async def _report(self, kind: str, **detail: object) -> None:
        await self._send(
            topics.Up.EVENT, Event(device_id=self.device_id, ts=self._clock.now_ms(), kind=kind, detail=detail)
        )

    # -- downlink --------------------------------------------------------------------------

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        try:
            parsed = topics.parse(topic)
        except MessageError as exc:
            self._log.warning("message on unexpected topic dropped", topic=topic, error=str(exc))
            return
        if parsed.direction is not topics.Direction.DOWN or parsed.device_id != self.device_id:
            # Some brokers hand a resumed session its own retained uplink; not for us to act on.
            self._log.debug("message not addressed to this device ignored", topic=topic)
            return
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        if parsed.kind is topics.Down.ANNOUNCE:
            await self.handle_announce(payload, topic=topic)
        else:
            self._log.info("downlink kind not handled yet", topic=topic)

    async def handle_announce(self, payload: bytes | bytearray, *, topic: str = "") -> None:
        """Decide what to do with one announce payload; never raises for bad input."""
        received_at = self._clock.now_ms()
        self.stats.received += 1
        try:
            announce = parse_payload(Announce, payload, topic=topic)
        except MessageError as exc:
            self.stats.bad_messages += 1
            self._log.warning("malformed announce dropped", topic=topic, error=str(exc))
            await self._report("bad_message", topic=topic, error=str(exc)[:200])
            return
        payment_log = self._log.bind(payment_id=announce.payment_id)
        try:
            if announce.device_id != self.device_id:
                raise SignatureError(f"announce {announce.payment_id} is addressed to {announce.device_id}")
            self._verifier.verify(announce)
        except SignatureError as exc:
            self.stats.refused += 1
            payment_log.warning("announce refused", reason=str(exc))
            await self._ack(announce, AckStatus.REFUSED, received_at, reason=str(exc)[:128])
            await self._report("announce_refused", payment_id=announce.payment_id, reason=str(exc)[:200])
            return
        if received_at > announce.expires_at():
            self.stats.expired += 1
            payment_log.info("announce expired, not played late", late_ms=received_at - announce.expires_at())
            await self._ack(announce, AckStatus.EXPIRED, received_at)
            return
        if not await self._seen.remember(announce.payment_id, received_at):
            self.stats.duplicates += 1
            payment_log.info("duplicate announce acked, not played again")
            await self._ack(announce, AckStatus.DUPLICATE, received_at)
            return
        text = announcement_text(announce.channel, announce.kind, announce.amount_fen)
        self._queue.put_nowait(_Playback(announce, text, received_at))

    async def _play_loop(self) -> None:
        while True:
            await self._play(await self._queue.get())

    async def _play(self, item: _Playback) -> None:
        try:
            rendered = self._voice.render(item.announce.payment_id, item.text)
            play_started_at = self._clock.now_ms()
            await self._sink.play(rendered)
        except AudioError as exc:
            self.stats.play_failures += 1
            self._log.error("announcement could not be played", payment_id=item.announce.payment_id, error=str(exc))
            await self._ack(item.announce, AckStatus.FAILED, item.received_at, reason=str(exc)[:128])
            await self._report("play_failed", payment_id=item.announce.payment_id, error=str(exc)[:200])
            return
        self.stats.played += 1
        await self._ack(
            item.announce, AckStatus.PLAYED, item.received_at, play_started_at=play_started_at, text=item.text
        )
