"""The announce path: a verified announce in, the merchant hears it once, the server hears back.

    take → TTL → remember the payment id → queue → play (the merchant's settings, now) → ack
         → receipt, where there is a printer

`take` is given announces whose signature the downlink has checked, and never waits for
playback, so a long announcement never stalls the link; the player plays the queue in order and
applies the merchant's settings (volume, repeat, quiet hours) at the moment it plays. The
settings arrive here too (`apply_settings`), as does a field agent's test announcement
(`say_test`). Every step a test drives is public: `take`, `play_next`, `replay_unplayed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import structlog

from edge_agent import diagnose
from edge_agent.clock import Clock
from edge_agent.config import LiveConfig
from edge_agent.dedup import SeenIds
from edge_agent.errors import CommandFailed
from edge_agent.hardware.errors import HardwareError
from edge_agent.hardware.ports import Printer
from edge_agent.merchant_settings import MerchantSettings
from edge_agent.receipt import receipt_for
from edge_agent.speech import ALERT_WORDS, repeated, spoken_text
from edge_agent.state_files import write_json
from edge_agent.stats import AgentStats
from edge_agent.uplink import Uplink
from edge_agent.voice import Speaker
from firmware_protocols import topics
from firmware_protocols.errors import MessageError
from firmware_protocols.messages import Ack, AckStatus, AlertCode, Announce, AnnounceKind, Settings, parse_payload
from mqtt_link.link import Delivery
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

# A test announcement plays at least this loud, whatever the merchant's volume: the field agent
# must hear it.
TEST_VOLUME_FLOOR = 5
# A test announcement that has not started by then is reported failed: the field agent is waiting.
TEST_START_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _Playback:
    text: str
    received_at: int
    announce: Announce | None = None  # None: a test announcement for a command
    started: asyncio.Future[int] | None = None


class Announcer(Component):
    def __init__(
        self,
        device_id: str,
        *,
        uplink: Uplink,
        speaker: Speaker,
        settings: MerchantSettings,
        seen: SeenIds,
        clock: Clock,
        stats: AgentStats,
        config: LiveConfig,
        printer: Printer | None = None,
    ) -> None:
        self.device_id = device_id
        self.settings = settings
        self._uplink = uplink
        self._speaker = speaker
        self._seen = seen
        self._clock = clock
        self._stats = stats
        self._config = config
        self._printer = printer
        self._queue: asyncio.Queue[_Playback] = asyncio.Queue()
        # Told when an announce arrives already expired: the clock may be wrong (the timekeeper
        # checks it soon), or the announce waited out its time to live on the way.
        self.on_expired: Callable[[], None] | None = None
        self._log = log.bind(device_id=device_id)

    async def _start(self, stack: AsyncExitStack) -> None:
        stack.callback(self._seen.close)
        self.replay_unplayed()
        spawn(stack, self._play_loop(), name=f"player:{self.device_id}")

    @property
    def queued(self) -> int:
        """Announcements waiting for the speaker."""
        return self._queue.qsize()

    # -- the steps -------------------------------------------------------------------------

    async def take(self, announce: Announce, delivery: Delivery) -> None:
        """Decide what to do with one checked announce: ack it expired or duplicate, or queue it."""
        received_at = self._clock.now_ms()
        self._stats.received += 1
        payment_log = self._log.bind(payment_id=announce.payment_id)
        if received_at > announce.expires_at():
            self._stats.expired += 1
            payment_log.info("announce expired, not played late", late_ms=received_at - announce.expires_at())
            if self.on_expired is not None:
                self.on_expired()
            await self._ack(announce, AckStatus.EXPIRED, received_at)
            return
        if not self._seen.remember(announce.payment_id, received_at, payload=delivery.payload):
            self._stats.duplicates += 1
            payment_log.info("duplicate announce acked, not played again")
            await self._ack(announce, AckStatus.DUPLICATE, received_at)
            return
        self._queue.put_nowait(_Playback(spoken_text(announce), received_at, announce))

    async def refuse(self, announce: Announce, reason: str) -> None:
        """An announce that failed its check: acked refused and reported, never played."""
        self._log.warning("announce refused", payment_id=announce.payment_id, reason=reason)
        await self._ack(announce, AckStatus.REFUSED, self._clock.now_ms(), reason=reason[:128])
        await self._uplink.event("announce_refused", payment_id=announce.payment_id, reason=reason[:200])

    def replay_unplayed(self) -> int:
        """Queue again what the last run took but never started playing (it was killed)."""
        queued = 0
        for payload, received_at in self._seen.unplayed():
            try:
                announce = parse_payload(Announce, payload)
            except MessageError as exc:  # verified when it arrived; only a damaged file gets here
                self._log.warning("unplayed announcement unreadable; dropped", error=str(exc))
                continue
            self._log.info("announcement left unplayed by the last run queued again", payment_id=announce.payment_id)
            self._queue.put_nowait(_Playback(spoken_text(announce), received_at, announce))
            queued += 1
        return queued

    async def play_next(self) -> bool:
        """Play the next queued announcement now; False if none waits."""
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return False
        await self._play(item)
        return True

    async def say_test(self) -> dict[str, Any]:
        """A field agent's test announcement: queued behind any payment, and answered once it starts."""
        received_at = self._clock.now_ms()
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        text = ALERT_WORDS[AlertCode.TEST]
        self._queue.put_nowait(_Playback(text, received_at, started=started))
        try:
            play_started_at = await asyncio.wait_for(started, timeout=TEST_START_TIMEOUT_S)
        except TimeoutError:
            raise CommandFailed(f"the test announcement did not start within {TEST_START_TIMEOUT_S:.0f} s") from None
        return {"text": text, "play_started_after_ms": play_started_at - received_at}

    def rehearse(self) -> str | None:
        """Read a payment's words as the announce path would, without playing them; what is
        wrong with the path, or None (part of the update health check)."""
        try:
            text = spoken_text(_REHEARSAL.model_copy(update={"device_id": self.device_id}))
        except (ValueError, KeyError) as exc:
            return f"announce path: {exc}"
        return None if text else "announce path: no words for a payment"

    # -- the merchant's settings -----------------------------------------------------------

    async def apply_settings(self, settings: Settings, _delivery: Delivery) -> None:
        """Take checked settings if they are newer than those held, and say so."""
        if not self.settings.offer(settings):
            self._log.debug("settings not newer than those held; ignored", version=settings.version)
            return
        voice_ok = self._speaker.use_voice(settings.voice)
        self._log.info("settings applied", version=settings.version, volume=settings.volume, repeat=settings.repeat)
        await self._uplink.event("settings_applied", version=settings.version, voice_ok=voice_ok)

    async def refuse_settings(self, _settings: Settings, reason: str) -> None:
        self._log.warning("settings refused", reason=reason)
        await self._uplink.event("settings_refused", reason=reason[:200])

    # -- playback --------------------------------------------------------------------------

    async def _play_loop(self) -> None:
        while True:
            await self._play(await self._queue.get())

    async def _play(self, item: _Playback) -> None:
        settings = self.settings.current
        announce = item.announce
        if announce is None:  # a test announcement
            await self._say_test(item, max(settings.volume, TEST_VOLUME_FLOOR))
            return
        now = self._clock.now_ms()
        payment_id = announce.payment_id
        if now > announce.expires_at():
            # Waited in the queue past its TTL (a stuck speaker ahead of it): late is worse than never.
            self._seen.mark(payment_id, "done")
            self._stats.expired += 1
            await self._ack(announce, AckStatus.EXPIRED, item.received_at)
            return
        if settings.volume == 0 or settings.is_quiet(now):
            self._seen.mark(payment_id, "done")
            self._stats.silenced += 1
            reason = "volume 0" if settings.volume == 0 else "quiet hours"
            await self._ack(announce, AckStatus.SILENCED, item.received_at, reason=reason, text=item.text)
            await self._after_announcement(announce, item.text, "silenced")
            return
        self._seen.mark(payment_id, "playing")
        try:
            play_started_at = self._clock.now_ms()
            await self._speaker.say(payment_id, repeated(item.text, settings.repeat), volume=settings.volume)
        except HardwareError as exc:
            self._seen.mark(payment_id, "done")
            self._stats.play_failures += 1
            self._log.error("announcement could not be played", payment_id=payment_id, error=str(exc))
            await self._ack(announce, AckStatus.FAILED, item.received_at, reason=str(exc)[:128])
            await self._uplink.event("play_failed", payment_id=payment_id, error=str(exc)[:200])
            return
        self._seen.mark(payment_id, "done")
        self._stats.played += 1
        await self._ack(announce, AckStatus.PLAYED, item.received_at, play_started_at=play_started_at, text=item.text)
        await self._after_announcement(announce, item.text, "played")

    async def _say_test(self, item: _Playback, volume: int) -> None:
        assert item.started is not None  # noqa: S101 - test items always carry their future.
        try:
            play_started_at = self._clock.now_ms()
            await self._speaker.say("test-announcement", item.text, volume=volume)
        except HardwareError as exc:
            if not item.started.done():
                item.started.set_exception(CommandFailed(f"speaker: {exc}"))
            return
        if not item.started.done():
            item.started.set_result(play_started_at)

    async def _after_announcement(self, announce: Announce, text: str, status: str) -> None:
        last = {"payment_id": announce.payment_id, "at_ms": self._clock.now_ms(), "text": text, "status": status}
        config = self._config.current
        try:
            await asyncio.to_thread(write_json, config.state_dir / diagnose.LAST_ANNOUNCEMENT_FILE, last)
        except OSError as exc:
            self._log.warning("cannot record the last announcement", error=str(exc))
        if announce.kind is not AnnounceKind.ALERT and self._printer is not None and config.print_receipts:
            await self._print_receipt(self._printer, announce, text)

    async def _print_receipt(self, printer: Printer, announce: Announce, text: str) -> None:
        try:
            await printer.print_receipt(receipt_for(announce, text).encode())
        except HardwareError as exc:
            self._stats.receipt_failures += 1
            self._log.warning("receipt not printed", payment_id=announce.payment_id, error=str(exc))
            await self._uplink.event("receipt_failed", payment_id=announce.payment_id, error=str(exc)[:200])
            return
        self._stats.receipts_printed += 1

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
        await self._uplink.send(topics.Up.ACK, ack)


# A payment as the announce path reads it, for the update health check (never played).
_REHEARSAL = Announce(
    device_id="rehearsal",
    ts=0,
    key_id="local",
    issued_at=0,
    ttl_s=60,
    payment_id="ota-health-check",
    amount_fen=1250,
    channel="wechat",
    paid_at=0,
)
