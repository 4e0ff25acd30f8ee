"""The agent: a device's link, announcer and health reporting, as one async resource.

    async with EdgeAgent(config, speaker=ClipSpeaker(VoicePack.builtin(), WavFileSink(out)),
                         modem=SimulatedModem()) as agent:
        await agent.wait_connected(10)
        ...

Announce path (kept short, measured in bench/): receive → validate → verify signature → check
TTL → remember payment id → queue → say (voice clips, or text to the TTS chip) → ack → print the
receipt where there is a printer. The receive side never waits for playback, so a long
announcement never stalls the link.

Health reports carry what the hardware ports say (modem signal, registration, cell and SIM,
TTS chip and printer state, system load, memory, disk); a part that changes state (a printer out
of paper, a modem that lost its network, a chip that stopped answering) is also reported at once
as a `hardware_changed` event, so a field agent sees it without waiting for the next report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import aiomqtt
import structlog

from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.dedup import SeenPayments
from edge_agent.hardware.errors import HardwareError
from edge_agent.hardware.ports import Modem, Printer, SystemInfo
from edge_agent.link import Backoff, Link, LinkDown
from edge_agent.outbox import Outbox
from edge_agent.speech import announcement_text, read_amount
from edge_agent.tasks import cancel_and_wait
from edge_agent.voice import Speaker
from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.errors import MessageError, SignatureError
from firmware_protocols.messages import (
    Ack,
    AckStatus,
    Announce,
    CellReport,
    Event,
    Health,
    Hello,
    Message,
    Presence,
    parse_payload,
)
from firmware_protocols.serial import escpos
from firmware_protocols.signing import AnnounceVerifier, decode_public_key

log = structlog.get_logger(__name__)

CAPABILITIES = ["announce.v1", "voice.zh_cn"]
# Part states not worth an event when first seen at start ("" is a part the device lacks). The
# SIM is reported by its id, so only a change of id (a swapped SIM) is an event.
_GOOD_PART_STATES = {"", "ok", "home", "roaming", "paper_low"}


@dataclass(slots=True)
class AgentStats:
    received: int = 0
    played: int = 0
    duplicates: int = 0
    expired: int = 0
    refused: int = 0
    bad_messages: int = 0
    play_failures: int = 0
    receipts_printed: int = 0
    receipt_failures: int = 0


@dataclass(frozen=True, slots=True)
class _Playback:
    announce: Announce
    text: str
    received_at: int


async def _none() -> None:
    return None


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
        speaker: Speaker,
        modem: Modem,
        printer: Printer | None = None,
        system: SystemInfo | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.device_id = config.device_id
        self.stats = AgentStats()
        self._speaker = speaker
        self._modem = modem
        self._printer = printer
        self._system = system
        self._parts: dict[str, str] = {}
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
            health = await self.health()
            await self._report_part_changes(health)
            await self._send(topics.Up.HEALTH, health)
            await asyncio.sleep(self.config.health_interval_s)

    async def health(self) -> Health:
        """A health report, with what every hardware port says now."""
        # Each part sits on its own line (and thread): ask them all at once.
        modem, printer, system, tts = await asyncio.gather(
            self._modem.status(),
            self._printer.status() if self._printer is not None else _none(),
            self._system.status() if self._system is not None else _none(),
            self._speaker.chip_state(),
        )
        return Health(
            device_id=self.device_id,
            ts=self._clock.now_ms(),
            uptime_s=(self._clock.now_ms() - self._started_ms) // 1000,
            rssi_dbm=modem.signal_dbm,
            volume=self.config.volume,
            queue_depth=self._queue.qsize(),
            played_total=self.stats.played,
            mem_rss_kb=_rss_kb(),
            signal_bars=modem.signal_bars,
            modem="ok" if modem.reachable else "unreachable",
            registration=modem.registration if modem.reachable else None,
            cell=CellReport(**dataclasses.asdict(modem.cell)) if modem.cell.rat else None,
            iccid=modem.iccid,
            imei=modem.imei,
            tts=tts,
            printer=printer.state if printer is not None else None,
            load_1m=system.load_1m if system else None,
            mem_available_kb=system.mem_available_kb if system else None,
            disk_free_kb=system.disk_free_kb if system else None,
            cpu_temp_c=system.cpu_temp_c if system else None,
        )

    async def _report_part_changes(self, health: Health) -> None:
        """An event for each part whose state changed since the last report, or is bad at the first."""
        now = {
            "modem": health.modem,
            "registration": health.registration,
            "tts": "ok" if health.tts in ("idle", "busy") else health.tts,
            "printer": health.printer,
            "sim": health.iccid,
        }
        for part, value in now.items():
            state = value or ""
            was = self._parts.get(part)
            bad_at_start = was is None and part != "sim" and state not in _GOOD_PART_STATES
            if bad_at_start or (was is not None and state != was):
                self._log.warning("hardware state changed", part=part, state=state, was=was)
                await self._report("hardware_changed", part=part, state=state, was=was)
            self._parts[part] = state

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
            play_started_at = self._clock.now_ms()
            await self._speaker.say(item.announce.payment_id, item.text, volume=self.config.volume)
        except HardwareError as exc:
            self.stats.play_failures += 1
            self._log.error("announcement could not be played", payment_id=item.announce.payment_id, error=str(exc))
            await self._ack(item.announce, AckStatus.FAILED, item.received_at, reason=str(exc)[:128])
            await self._report("play_failed", payment_id=item.announce.payment_id, error=str(exc)[:200])
            return
        self.stats.played += 1
        await self._ack(
            item.announce, AckStatus.PLAYED, item.received_at, play_started_at=play_started_at, text=item.text
        )
        if self._printer is not None and self.config.print_receipts:
            await self._print_receipt(self._printer, item)

    async def _print_receipt(self, printer: Printer, item: _Playback) -> None:
        announce = item.announce
        try:
            await printer.print_receipt(receipt_for(announce, item.text).encode())
        except HardwareError as exc:
            self.stats.receipt_failures += 1
            self._log.warning("receipt not printed", payment_id=announce.payment_id, error=str(exc))
            await self._report("receipt_failed", payment_id=announce.payment_id, error=str(exc)[:200])
            return
        self.stats.receipts_printed += 1


def receipt_for(announce: Announce, spoken: str) -> escpos.Receipt:
    """The ESC/POS receipt a POS prints for an announced payment."""
    yuan, fen = divmod(announce.amount_fen, 100)
    paid = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(announce.paid_at / 1000))
    title = "退款凭证" if announce.kind == "refund" else "收款凭证"
    return (
        escpos.Receipt()
        .init()
        .chinese()
        .align(escpos.Align.CENTER)
        .bold()
        .size(2, 2)
        .line(f"好店 {title}")
        .size(1, 1)
        .bold(on=False)
        .align(escpos.Align.LEFT)
        .line(spoken.removesuffix(read_amount(announce.amount_fen)))
        .line(f"金额: {yuan}.{fen:02d} 元")
        .line(f"时间: {paid}")
        .chinese(on=False)
        .line(f"No. {announce.payment_id}")
        .feed(3)
        .cut(partial=True)
    )
