"""The agent: a device's link, announcer, health, commands and settings, as one async resource.

    async with EdgeAgent(config, speaker=ClipSpeaker(VoicePack.builtin(), WavFileSink(out)),
                         modem=SimulatedModem()) as agent:
        await agent.wait_connected(10)
        ...

Announce path (kept short, measured in bench/): receive → validate → verify signature → check
TTL → remember payment id → queue → say (voice clips, or text to the TTS chip) → ack → print the
receipt where there is a printer. The receive side never waits for playback, so a long
announcement never stalls the link; the player applies the merchant's settings (volume,
repeat, quiet hours) at the moment it plays.

Uplink: every message goes straight to the broker while the link is up and nothing older waits;
otherwise into the on-disk outbox, which a flusher empties in order once the link is back.

Health: the parts are read every few seconds and a part that turns bad or good is an event at
once (`fault` / `recovered`); the full report goes out every `health_interval_s`, and is also
left in the state folder for a local diagnose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiomqtt
import httpx
import structlog
from pydantic import ValidationError

from edge_agent import commands, diagnose, logbook
from edge_agent.boot import Boot, BootRecord, StateLock
from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.dedup import SeenIds
from edge_agent.errors import AgentError
from edge_agent.hardware.errors import HardwareError
from edge_agent.hardware.ports import Modem, Printer, SystemInfo
from edge_agent.health import PartWatch, health_report, part_states, read_parts
from edge_agent.merchant_settings import MerchantSettings
from edge_agent.ota.slots import BootControl
from edge_agent.ota.updater import UpdatePolicy, Updater
from edge_agent.outbox import Outbox
from edge_agent.receipt import receipt_for
from edge_agent.speech import ALERT_WORDS, repeated, spoken_text
from edge_agent.state_files import read_json, write_json
from edge_agent.voice import Speaker
from firmware_protocols import topics
from firmware_protocols.errors import MessageError, SignatureError
from firmware_protocols.messages import (
    Ack,
    AckStatus,
    AlertCode,
    Announce,
    AnnounceKind,
    Command,
    CommandResult,
    CommandStatus,
    Event,
    Health,
    Hello,
    Message,
    OtaOffer,
    OtaStatus,
    Presence,
    Settings,
    Signed,
    parse_payload,
)
from firmware_protocols.signing import Verifier, decode_public_key, key_id_of
from mqtt_link.backoff import Backoff
from mqtt_link.errors import LinkDown
from mqtt_link.link import Delivery, Link, Session
from mqtt_link.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

CAPABILITIES = [
    "announce.v1",
    "voice.zh_cn",
    "alert.v1",
    "settings.v1",
    "ota.v1",
    *(f"command.{n}" for n in commands.COMMANDS),
]
# Parts are read this often (or at the health interval, if shorter) so that a fault is an event
# within seconds; reading a modem's five AT answers and /proc costs milliseconds.
WATCH_INTERVAL_S = 10.0
# A test announcement plays at least this loud, whatever the merchant's volume: the field agent
# must hear it.
TEST_VOLUME_FLOOR = 5
CONFIG_OVERRIDES_FILE = "config-overrides.json"


@dataclass(slots=True)
class AgentStats:
    received: int = 0
    played: int = 0
    duplicates: int = 0
    expired: int = 0
    refused: int = 0
    silenced: int = 0
    bad_messages: int = 0
    play_failures: int = 0
    receipts_printed: int = 0
    receipt_failures: int = 0
    commands: int = 0


@dataclass(slots=True)
class _Playback:
    text: str
    received_at: int
    announce: Announce | None = None  # None: a test announcement for a command
    started: asyncio.Future[int] | None = field(default=None)


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
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`http_transport`: how update downloads reach the network (default: httpx's own)."""
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self.config = _with_overrides(config, state / CONFIG_OVERRIDES_FILE)
        self.device_id = config.device_id
        self.stats = AgentStats()
        self._speaker = speaker
        self._modem = modem
        self._printer = printer
        self._system = system
        self._clock = clock or SystemClock()
        self._verifier = Verifier([decode_public_key(k) for k in config.server_keys])
        self._seen = SeenIds(state / "payments.sqlite3")
        self._seen_commands = SeenIds(state / "seen-commands.sqlite3", capacity=1000)
        self._outbox = Outbox(state / "outbox.sqlite3", max_telemetry=config.outbox_max_telemetry)
        self.settings = MerchantSettings.of_device(config)
        speaker.use_voice(self.settings.current.voice)
        self._queue: asyncio.Queue[_Playback] = asyncio.Queue()
        self._watch = PartWatch()
        self._lock = StateLock(state)
        self._http_transport = http_transport
        self.boot_control = BootControl(state, factory_version=config.firmware, factory_slot=config.slot)
        self.ota: Updater | None = None
        self._halted = False
        self.boot: Boot | None = None
        self._boot_record: BootRecord | None = None
        self._started_ms = self._clock.now_ms()
        self._tasks: list[asyncio.Task[None]] = []
        self._command_tasks: set[asyncio.Task[None]] = set()
        self._flush_wakeup = asyncio.Event()
        self._reboot_pending = False
        self.restart_requested = asyncio.Event()
        self._log = log.bind(device_id=self.device_id)
        self._link = Link(
            config.broker_endpoint(),
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
            session=Session(mqtt_version=config.mqtt_version, expiry_s=config.session_expiry_s),
            tls=config.tls(),
            password=config.mqtt_password,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._lock.acquire()
        # The bootloader's step: which slot runs, and whether a trial slot was just dropped.
        booted = self.boot_control.boot()
        self.config = self.config.model_copy(update={"firmware": booted.version, "slot": booted.slot})
        self._boot_record = BootRecord(
            self.config.state_dir, self._clock.now_ms(), reason="rollback" if booted.rolled_back else None
        )
        self.boot = self._boot_record.boot
        release_keys = [decode_public_key(k) for k in self.config.release_keys]
        self.ota = Updater(
            device_id=self.device_id,
            model=self.config.model,
            state_dir=self.config.state_dir,
            boot_control=self.boot_control,
            booted=booted,
            release_keys={key_id_of(k): k for k in release_keys},
            host=self,
            clock=self._clock,
            policy=UpdatePolicy(
                download_attempts=self.config.ota_download_attempts,
                retry_initial_s=self.config.ota_retry_initial_s,
                max_rate_bps=self.config.ota_max_rate_bps,
                trial_boots=self.config.ota_trial_boots,
                health_timeout_s=self.config.ota_health_timeout_s,
            ),
            transport=self._http_transport,
        )
        self._log.info(
            "agent starting", boot_id=self.boot.boot_id, boot_reason=self.boot.reason, outbox=len(self._outbox)
        )
        self._requeue_unplayed()
        await self._link.__aenter__()
        self._tasks = [
            asyncio.create_task(self._play_loop(), name=f"player:{self.device_id}"),
            asyncio.create_task(self._watch_loop(), name=f"health:{self.device_id}"),
            asyncio.create_task(self._flush_loop(), name=f"outbox:{self.device_id}"),
        ]
        self.ota.start()
        return self

    def _requeue_unplayed(self) -> None:
        """Queue again what the last run took but never started playing (it was killed)."""
        for payload, received_at in self._seen.unplayed():
            try:
                announce = parse_payload(Announce, payload)
            except MessageError as exc:  # verified when it arrived; only a damaged file gets here
                self._log.warning("unplayed announcement unreadable; dropped", error=str(exc))
                continue
            self._log.info("announcement left unplayed by the last run queued again", payment_id=announce.payment_id)
            self._queue.put_nowait(_Playback(spoken_text(announce), received_at, announce))

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._halted:
            return
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
        await self._stop()
        if self._boot_record is not None and not self._reboot_pending:
            self._boot_record.stopped_cleanly()
        self._lock.release()

    async def _stop(self) -> None:
        if self.ota is not None:
            await self.ota.close()
        for task in [*self._tasks, *self._command_tasks]:
            await cancel_and_wait(task)
        await self._link.close()
        self._seen.close()
        self._seen_commands.close()
        self._outbox.close()

    async def halt(self) -> None:
        """Stop dead, as a power cut would: no goodbye, no clean-stop record, work left where it
        was. For simulators and tests; on a board the power does this."""
        self._halted = True
        await self._stop()
        self._lock.release()

    async def wait_connected(self, timeout_s: float) -> None:
        await self._link.wait_connected(timeout_s)

    @property
    def connected(self) -> bool:
        return self._link.connected.is_set()

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    # -- uplink ----------------------------------------------------------------------------

    def _presence(self, *, online: bool, reason: Literal["connected", "shutdown", "lost"]) -> Presence:
        return Presence(device_id=self.device_id, ts=self._clock.now_ms(), online=online, reason=reason)

    async def _send(self, kind: topics.Up, message: Message) -> None:
        """Publish now if the link is up and nothing older waits, else keep it for the flusher."""
        topic = topics.up(self.device_id, kind)
        payload = message.to_json()
        if not len(self._outbox) and self.connected:
            try:
                await self._link.publish(topic, payload)
            except LinkDown:
                pass
            else:
                return
        self._outbox.put(topic, payload, is_ack=kind is topics.Up.ACK)
        self._flush_wakeup.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_wakeup.wait()
            self._flush_wakeup.clear()
            sent = 0
            try:
                while self.connected and (batch := self._outbox.peek(100)):
                    for item in batch:
                        await self._link.publish(item.topic, item.payload)
                        self._outbox.done(item)
                        sent += 1
            except LinkDown as exc:
                self._log.info("outbox flush paused; link down", sent=sent, waiting=len(self._outbox), error=str(exc))
                continue
            if sent:
                self._log.info("outbox flushed", messages=sent)

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
            boot_id=self.boot.boot_id if self.boot else "",
            boot_reason=self.boot.reason if self.boot else None,
            slot=self.config.slot,
            capabilities=CAPABILITIES,
        )
        await self._link.publish(topics.up(self.device_id, topics.Up.HELLO), hello.to_json())
        self._flush_wakeup.set()

    async def _watch_loop(self) -> None:
        next_report = 0.0
        loop = asyncio.get_running_loop()
        while True:
            health = await self.check_parts()
            if loop.time() >= next_report:
                await self._send(topics.Up.HEALTH, health)
                next_report = loop.time() + self.config.health_interval_s
                await self._leave_status(health)
            await asyncio.sleep(min(WATCH_INTERVAL_S, self.config.health_interval_s))

    async def check_parts(self) -> Health:
        """Read every part; report at once each one that turned bad or good since the last look."""
        health = await self.health()
        for change in self._watch.changes(part_states(health, self.config)):
            self._log.warning(
                "part state changed", kind=change.kind, part=change.part, state=change.state, was=change.was
            )
            await self._report(change.kind, part=change.part, state=change.state, was=change.was)
        return health

    async def _leave_status(self, health: Health) -> None:
        """The last report and link state, for a diagnose run beside the agent."""
        status = {
            "health": health.model_dump(mode="json"),
            "connected": self.connected,
            "written_ms": self._clock.now_ms(),
        }
        try:
            await asyncio.to_thread(write_json, self.config.state_dir / diagnose.STATUS_FILE, status)
        except OSError as exc:
            self._log.warning("cannot write status file", error=str(exc))

    def errors(self) -> dict[str, int]:
        """Error counters since boot, as the health report carries them."""
        return {
            "play_failures": self.stats.play_failures,
            "bad_messages": self.stats.bad_messages,
            "refused": self.stats.refused,
            "receipt_failures": self.stats.receipt_failures,
            "link_drops": max(0, self._link.connects - 1),
            "outbox_evicted": self._outbox.evicted,
            "outbox_disk_failing": int(self._outbox.disk_error is not None),
        }

    async def health(self) -> Health:
        """A health report, with what every hardware port says now."""
        parts = await read_parts(self._speaker, self._modem, self._printer, self._system)
        now = self._clock.now_ms()
        settings = self.settings.current
        return health_report(
            self.device_id,
            now,
            parts,
            uptime_s=max(0, now - self._started_ms) // 1000,
            volume=settings.volume,
            queue_depth=self._queue.qsize(),
            played_total=self.stats.played,
            boot_id=self.boot.boot_id if self.boot else None,
            boot_reason=self.boot.reason if self.boot else None,
            firmware=self.config.firmware,
            slot=self.config.slot,
            settings_version=settings.version or None,
            errors=self.errors(),
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

    async def _on_message(self, delivery: Delivery) -> None:
        topic = delivery.topic
        try:
            parsed = topics.parse(topic)
        except MessageError as exc:
            self._log.warning("message on unexpected topic dropped", topic=topic, error=str(exc))
            return
        if parsed.direction is not topics.Direction.DOWN or parsed.device_id != self.device_id:
            # Some brokers hand a resumed session its own retained uplink; not for us to act on.
            self._log.debug("message not addressed to this device ignored", topic=topic)
            return
        payload = delivery.payload
        if parsed.kind is topics.Down.ANNOUNCE:
            await self.handle_announce(payload, topic=topic)
        elif parsed.kind is topics.Down.COMMAND:
            await self.handle_command(payload, topic=topic)
        elif parsed.kind is topics.Down.SETTINGS:
            await self.handle_settings(payload, topic=topic)
        elif parsed.kind is topics.Down.OTA:
            await self.handle_ota(payload, topic=topic)

    async def _bad_message(self, topic: str, exc: MessageError) -> None:
        self.stats.bad_messages += 1
        self._log.warning("malformed message dropped", topic=topic, error=str(exc))
        await self._report("bad_message", topic=topic, error=str(exc)[:200])

    def _check_signed(self, message: Signed) -> None:
        """Raise `SignatureError` unless `message` is for this device and signed by the server."""
        if message.device_id != self.device_id:
            raise SignatureError(f"{message.describe()}: addressed to {message.device_id}, this is {self.device_id}")
        self._verifier.verify(message)

    async def handle_announce(self, payload: bytes | bytearray, *, topic: str = "") -> None:
        """Decide what to do with one announce payload; never raises for bad input."""
        received_at = self._clock.now_ms()
        self.stats.received += 1
        try:
            announce = parse_payload(Announce, payload, topic=topic)
        except MessageError as exc:
            await self._bad_message(topic, exc)
            return
        payment_log = self._log.bind(payment_id=announce.payment_id)
        try:
            self._check_signed(announce)
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
        if not self._seen.remember(announce.payment_id, received_at, payload=bytes(payload)):
            self.stats.duplicates += 1
            payment_log.info("duplicate announce acked, not played again")
            await self._ack(announce, AckStatus.DUPLICATE, received_at)
            return
        self._queue.put_nowait(_Playback(spoken_text(announce), received_at, announce))

    async def handle_settings(self, payload: bytes | bytearray, *, topic: str = "") -> None:
        """Apply the merchant's settings if they are signed and newer; never raises for bad input."""
        if not payload:
            return  # a cleared retained message: nothing to apply
        try:
            settings = parse_payload(Settings, payload, topic=topic)
            self._check_signed(settings)
        except MessageError as exc:
            await self._bad_message(topic, exc)
            return
        except SignatureError as exc:
            self.stats.refused += 1
            self._log.warning("settings refused", reason=str(exc))
            await self._report("settings_refused", reason=str(exc)[:200])
            return
        if not self.settings.offer(settings):
            self._log.debug("settings not newer than those held; ignored", version=settings.version)
            return
        voice_ok = self._speaker.use_voice(settings.voice)
        self._log.info("settings applied", version=settings.version, volume=settings.volume, repeat=settings.repeat)
        await self._report("settings_applied", version=settings.version, voice_ok=voice_ok)

    async def handle_ota(self, payload: bytes | bytearray, *, topic: str = "") -> None:
        """Hand a signed, current update offer to the updater; never raises for bad input."""
        try:
            offer = parse_payload(OtaOffer, payload, topic=topic)
        except MessageError as exc:
            await self._bad_message(topic, exc)
            return
        try:
            self._check_signed(offer)
            if self._clock.now_ms() > offer.expires_at():
                raise SignatureError(f"{offer.describe()}: expired")
        except SignatureError as exc:
            self.stats.refused += 1
            self._log.warning("ota offer refused", reason=str(exc))
            await self._report("ota_refused", campaign_id=offer.campaign_id, reason=str(exc)[:200])
            return
        if self.ota is not None:
            await self.ota.offer(offer)

    async def handle_command(self, payload: bytes | bytearray, *, topic: str = "") -> None:
        """Check one command, answer at once, and run it in the background; never raises for bad input."""
        received_at = self._clock.now_ms()
        try:
            command = parse_payload(Command, payload, topic=topic)
        except MessageError as exc:
            await self._bad_message(topic, exc)
            return
        self.stats.commands += 1
        command_log = self._log.bind(command_id=command.command_id, command=command.name)
        try:
            self._check_signed(command)
            if received_at > command.expires_at():
                raise ValueError(f"expired {(received_at - command.expires_at()) // 1000} s ago")
            action, args = commands.prepare(command.name, command.args)
        except (SignatureError, ValueError) as exc:
            self.stats.refused += 1
            command_log.warning("command refused", reason=str(exc))
            await self._result(command, CommandStatus.REFUSED, reason=str(exc))
            return
        if not self._seen_commands.remember(command.command_id, received_at):
            command_log.info("command already handled; not run again")
            await self._result(command, CommandStatus.DUPLICATE)
            return
        command_log.info("command accepted")
        await self._result(command, CommandStatus.ACCEPTED)
        task = asyncio.create_task(self._run_command(command, action, args), name=f"command:{command.command_id}")
        self._command_tasks.add(task)
        task.add_done_callback(self._command_tasks.discard)

    async def _run_command(self, command: Command, action: commands.Action, args: Any) -> None:
        try:
            result = await action(self, args, command.issued_at)
        except (commands.CommandFailed, AgentError, OSError) as exc:
            self._log.warning("command failed", command_id=command.command_id, command=command.name, error=str(exc))
            await self._result(command, CommandStatus.FAILED, reason=str(exc))
            return
        await self._result(command, CommandStatus.SUCCEEDED, result=result)
        if self._reboot_pending:
            self.restart_requested.set()

    async def _result(
        self,
        command: Command,
        status: CommandStatus,
        *,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        message = CommandResult(
            device_id=self.device_id,
            ts=self._clock.now_ms(),
            command_id=command.command_id,
            name=command.name[:128],
            status=status,
            reason=reason[:128] if reason else None,
            result=result or {},
        )
        await self._send(topics.Up.RESULT, message)

    # -- what the updater needs (ota.updater.UpdateHost) --------------------------------------

    async def send_ota_status(self, status: OtaStatus) -> None:
        await self._send(topics.Up.OTA, status)

    def request_restart(self, reason: str) -> None:
        if self._boot_record is not None:
            self._boot_record.request_restart("rollback" if reason == "rollback" else "ota")
        self._reboot_pending = True
        self.restart_requested.set()

    async def health_problems(self) -> list[str]:
        """The new version's health check: the broker is reached, the speaker passes its self
        test, and the announce path works up to the speaker (a payment's words are read and
        spoken text rendered by the voice or taken by the chip)."""
        problems: list[str] = []
        try:
            await self._link.wait_connected(self.config.ota_health_timeout_s)
        except TimeoutError:
            problems.append(f"broker not reached in {self.config.ota_health_timeout_s:.0f} s")
        try:
            await self._speaker.self_test()
        except HardwareError as exc:
            problems.append(f"audio self-test: {exc}")
        try:
            text = spoken_text(_REHEARSAL.model_copy(update={"device_id": self.device_id}))
            if not text:
                problems.append("announce path: no words for a payment")
        except (ValueError, KeyError) as exc:
            problems.append(f"announce path: {exc}")
        return problems

    # -- what commands act on (commands.CommandHost) -----------------------------------------

    async def request_reboot(self) -> None:
        if self._boot_record is None:
            raise commands.CommandFailed("the agent is not running")
        self._boot_record.request_restart("command")
        self._reboot_pending = True

    async def set_volume(self, volume: int, version_ms: int) -> None:
        current = self.settings.current
        changed = current.model_copy(
            update={"volume": volume, "version": max(version_ms, current.version + 1), "key_id": "local", "sig": ""}
        )
        self.settings.offer(changed)

    async def test_announce(self) -> dict[str, Any]:
        received_at = self._clock.now_ms()
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        text = ALERT_WORDS[AlertCode.TEST]
        self._queue.put_nowait(_Playback(text, received_at, started=started))
        try:
            play_started_at = await asyncio.wait_for(started, timeout=30)
        except TimeoutError:
            raise commands.CommandFailed("the test announcement did not start within 30 s") from None
        return {"text": text, "play_started_after_ms": play_started_at - received_at}

    async def run_diagnose(self) -> list[diagnose.Check]:
        health = await self.health()
        url = self._link.endpoint.url()
        observed = diagnose.Observed(
            health=health,
            broker_ok=self.connected,
            broker_detail=f"{url} {'✓' if self.connected else '✗'}",
            now_ms=self._clock.now_ms(),
            agent_pid=os.getpid(),
            last_announcement=read_json(self.config.state_dir / diagnose.LAST_ANNOUNCEMENT_FILE),
        )
        return diagnose.checklist(observed, self.config)

    def recent_log(self, lines: int) -> list[str]:
        return logbook.recent(self.device_id, lines)

    async def set_config(self, key: str, value: Any) -> None:
        path = self.config.state_dir / CONFIG_OVERRIDES_FILE
        overrides = read_json(path) or {}
        overrides[key] = value
        try:
            self.config = AgentConfig.model_validate({**self.config.model_dump(), key: value})
        except ValidationError as exc:
            raise commands.CommandFailed(f"bad value for {key}: {exc.errors()[0]['msg']}") from exc
        await asyncio.to_thread(write_json, path, overrides)

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
            self.stats.expired += 1
            await self._ack(announce, AckStatus.EXPIRED, item.received_at)
            return
        if settings.volume == 0 or settings.is_quiet(now):
            self._seen.mark(payment_id, "done")
            self.stats.silenced += 1
            reason = "volume 0" if settings.volume == 0 else "quiet hours"
            await self._ack(announce, AckStatus.SILENCED, item.received_at, reason=reason, text=item.text)
            await self._after_announcement(item, "silenced")
            return
        self._seen.mark(payment_id, "playing")
        try:
            play_started_at = self._clock.now_ms()
            await self._speaker.say(payment_id, repeated(item.text, settings.repeat), volume=settings.volume)
        except HardwareError as exc:
            self._seen.mark(payment_id, "done")
            self.stats.play_failures += 1
            self._log.error("announcement could not be played", payment_id=payment_id, error=str(exc))
            await self._ack(announce, AckStatus.FAILED, item.received_at, reason=str(exc)[:128])
            await self._report("play_failed", payment_id=payment_id, error=str(exc)[:200])
            return
        self._seen.mark(payment_id, "done")
        self.stats.played += 1
        await self._ack(announce, AckStatus.PLAYED, item.received_at, play_started_at=play_started_at, text=item.text)
        await self._after_announcement(item, "played")

    async def _say_test(self, item: _Playback, volume: int) -> None:
        assert item.started is not None  # noqa: S101 - test items always carry their future.
        try:
            play_started_at = self._clock.now_ms()
            await self._speaker.say("test-announcement", item.text, volume=volume)
        except HardwareError as exc:
            if not item.started.done():
                item.started.set_exception(commands.CommandFailed(f"speaker: {exc}"))
            return
        if not item.started.done():
            item.started.set_result(play_started_at)

    async def _after_announcement(self, item: _Playback, status: str) -> None:
        announce = item.announce
        assert announce is not None  # noqa: S101 - only announcements get here.
        last = {"payment_id": announce.payment_id, "at_ms": self._clock.now_ms(), "text": item.text, "status": status}
        try:
            await asyncio.to_thread(write_json, self.config.state_dir / diagnose.LAST_ANNOUNCEMENT_FILE, last)
        except OSError as exc:
            self._log.warning("cannot record the last announcement", error=str(exc))
        if announce.kind is not AnnounceKind.ALERT and self._printer is not None and self.config.print_receipts:
            await self._print_receipt(self._printer, announce, item.text)

    async def _print_receipt(self, printer: Printer, announce: Announce, text: str) -> None:
        try:
            await printer.print_receipt(receipt_for(announce, text).encode())
        except HardwareError as exc:
            self.stats.receipt_failures += 1
            self._log.warning("receipt not printed", payment_id=announce.payment_id, error=str(exc))
            await self._report("receipt_failed", payment_id=announce.payment_id, error=str(exc)[:200])
            return
        self.stats.receipts_printed += 1


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


def _with_overrides(config: AgentConfig, path: Path) -> AgentConfig:
    """`config` with the runtime settings a `set_config` command changed, if they still validate."""
    overrides = read_json(path)
    if not overrides:
        return config
    try:
        return AgentConfig.model_validate({**config.model_dump(), **overrides})
    except ValidationError as exc:
        log.warning("config overrides ignored", path=str(path), error=json.dumps(exc.errors(), default=str)[:300])
        return config
