"""The agent: a device's parts, composed into one async resource.

    async with EdgeAgent(config, speaker=ClipSpeaker(VoicePack.builtin(), WavFileSink(out)),
                         modem=SimulatedModem()) as agent:
        await agent.wait_connected(10)
        ...

Each part owns one job and takes the ports it needs:

    link        the persistent MQTT session (`mqtt_link.link.Link`)
    uplink      every message out: at once, or through the on-disk outbox (`uplink`)
    downlink    every message in: routed, validated, its signature checked once (`downlink`)
    announcer   TTL → dedup → queue → play → ack → receipt, and the merchant's settings (`announcer`)
    timekeeper  the board's clock corrected from NTP, the modem or the server's signed time (`timekeeper`)
    reporter    the parts watched, faults at once, health reports, diagnose (`reporter`)
    commands    remote commands, answered and run (`command_runner`)
    ota_host    the updater (`ota/`) and what it needs from the running agent (`ota_host`)

`EdgeAgent` builds them, wires the downlink's routes to them, and starts and stops them in
order on one `AsyncExitStack` (`mqtt_link.tasks.Component`): if a start fails part way, what
started is stopped again.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from types import TracebackType

import httpx
import structlog

from edge_agent import commands
from edge_agent.announcer import Announcer
from edge_agent.boot import Boot, BootRecord, Restart, StateLock
from edge_agent.clock import Clock, SystemClock
from edge_agent.command_runner import AgentCommandHost, CommandRunner
from edge_agent.config import AgentConfig, LiveConfig
from edge_agent.dedup import SeenIds
from edge_agent.downlink import Downlink
from edge_agent.hardware.ports import Modem, Printer, SystemInfo
from edge_agent.merchant_settings import MerchantSettings
from edge_agent.ota.builds import running_build
from edge_agent.ota.slots import BootChoice, BootControl
from edge_agent.ota.updater import UpdatePolicy, Updater
from edge_agent.ota_host import OtaHost
from edge_agent.outbox import Outbox
from edge_agent.reporter import HealthReporter
from edge_agent.stats import AgentStats
from edge_agent.time_sources import configured_sources
from edge_agent.timekeeper import TimeKeeper, TrustedClock
from edge_agent.uplink import DeviceUplink
from edge_agent.voice import Speaker
from firmware_protocols import topics
from firmware_protocols.messages import SIGNED_REPORTS, Announce, Command, Hello, OtaOffer, Settings, Signed
from firmware_protocols.signing import Verifier, decode_public_key, key_id_of
from mqtt_link.backoff import Backoff
from mqtt_link.link import Delivery, Link, Session
from mqtt_link.tasks import Component

log = structlog.get_logger(__name__)

CAPABILITIES = [
    "announce.v1",
    "voice.zh_cn",
    "alert.v1",
    "settings.v1",
    "ota.v1",
    *(f"command.{n}" for n in commands.COMMANDS),
]


# The build the running code came from (None: the installed package, not an update's).
BUILD_ID: str | None = str((running_build() or {}).get("build_id") or "") or None


class EdgeAgent(Component):
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
        booted: BootChoice | None = None,
    ) -> None:
        """`clock`: the board's clock (default the system's), which the agent corrects;
        `http_transport`: how update downloads reach the network (default: httpx's own);
        `booted`: the slot the launcher chose (default: the agent chooses, as it starts)."""
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self.device_id = config.device_id
        self.live = LiveConfig(config)
        verifier = Verifier([decode_public_key(k) for k in config.server_keys])
        # Every part runs on the corrected clock (TTLs, expiries, quiet hours, the password).
        self.clock = TrustedClock(clock or SystemClock())
        self.timekeeper = TimeKeeper(
            self.device_id,
            self.clock,
            configured_sources(
                config.time_sources,
                device_id=self.device_id,
                modem=modem,
                verifier=verifier,
                ntp_servers=config.ntp_servers,
                time_url=config.time_url,
                ca_file=config.ca_file,
            ),
            state,
            interval_s=config.time_sync_interval_s,
        )
        self.stats = AgentStats()
        self.settings = MerchantSettings.of_device(config)
        speaker.use_voice(self.settings.current.voice)
        self.restart = Restart()
        self.boot_control = BootControl(state, factory_version=config.firmware, factory_slot=config.slot)
        self.boot: Boot | None = None
        self._booted = booted
        self._http_transport = http_transport
        self._lock = StateLock(state)
        self._halted = False
        self._log = log.bind(device_id=self.device_id)

        self.link = Link(
            config.broker_endpoint(),
            client_id=self.device_id,
            subscriptions=[topics.device_downlink_filter(self.device_id)],
            on_message=self._deliver,
            on_connect=self._on_connect,
            will=lambda: self.uplink.will(),  # noqa: PLW0108 - the uplink is made after the link
            keepalive_s=config.keepalive_s,
            backoff=Backoff(config.reconnect_initial_s, config.reconnect_max_s),
            session=Session(mqtt_version=config.mqtt_version, expiry_s=config.session_expiry_s),
            # The certificate's dates are judged on the corrected clock, not the board's: a board
            # at 1970 would otherwise fail every handshake ("certificate is not yet valid").
            tls=config.tls(check_dates=False),
            cert_clock=lambda: self.clock.now_ms() / 1000,
            password=lambda: config.mqtt_password(self.clock.now_ms() / 1000),
            on_refused=self._refused,
        )
        outbox = Outbox(state / "outbox.sqlite3", max_telemetry=config.outbox_max_telemetry)
        self.uplink = DeviceUplink(
            self.device_id, self.link, outbox, self.clock, hello=self._hello, report_key=config.report_key()
        )
        self.announcer = Announcer(
            self.device_id,
            uplink=self.uplink,
            speaker=speaker,
            settings=self.settings,
            seen=SeenIds(state / "payments.sqlite3"),
            clock=self.clock,
            stats=self.stats,
            config=self.live,
            printer=printer,
        )
        self.reporter = HealthReporter(
            self.device_id,
            uplink=self.uplink,
            link=self.link,
            outbox=outbox,
            config=self.live,
            clock=self.clock,
            stats=self.stats,
            speaker=speaker,
            modem=modem,
            printer=printer,
            system=system,
            announcer=self.announcer,
        )
        self.reporter.timekeeper = self.timekeeper
        self.announcer.on_expired = self.timekeeper.wake
        host = AgentCommandHost(self.device_id, self.restart, self.settings, self.announcer, self.reporter, self.live)
        self.commands = CommandRunner(
            self.device_id,
            host=host,
            uplink=self.uplink,
            seen=SeenIds(state / "seen-commands.sqlite3", capacity=1000),
            clock=self.clock,
            stats=self.stats,
            restart=self.restart,
        )
        self.ota_host = OtaHost(
            self.device_id,
            uplink=self.uplink,
            link=self.link,
            restart=self.restart,
            speaker=speaker,
            announcer=self.announcer,
            clock=self.clock,
            stats=self.stats,
            health_timeout_s=config.ota_health_timeout_s,
        )
        self.downlink = Downlink(self.device_id, verifier, self.uplink, self.stats, on_verified=self._verified)
        self.downlink.route(topics.Down.ANNOUNCE, Announce, self.announcer.take, self.announcer.refuse)
        self.downlink.route(topics.Down.COMMAND, Command, self.commands.take, self.commands.refuse)
        self.downlink.route(
            topics.Down.SETTINGS,
            Settings,
            self.announcer.apply_settings,
            self.announcer.refuse_settings,
            retained=True,
        )
        self.downlink.route(topics.Down.OTA, OtaOffer, self.ota_host.take, self.ota_host.refuse)

    @property
    def config(self) -> AgentConfig:
        """The configuration in force: the file's, the booted slot's version, and `set_config`'s changes."""
        return self.live.current

    @property
    def ota(self) -> Updater | None:
        return self.ota_host.updater

    @property
    def restart_requested(self) -> asyncio.Event:
        """Set when the agent asks to be restarted (a reboot command, an update's slot switch)."""
        return self.restart.requested

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        await self.link.wait_connected(timeout_s)

    # -- lifecycle -------------------------------------------------------------------------

    async def _start(self, stack: AsyncExitStack) -> None:
        self._lock.acquire()
        stack.callback(self._lock.release)
        # The bootloader's step (the launcher's, when it started us): which slot runs, and
        # whether a trial slot was just dropped.
        booted = self._booted or self.boot_control.boot()
        self.live.booted(booted.version, booted.slot)
        record = BootRecord(
            self.live.current.state_dir, self.clock.now_ms(), reason="rollback" if booted.rolled_back else None
        )
        self.restart.record = record
        self.boot = self.reporter.boot = record.boot
        stack.callback(self._stopped, record)
        self._log.info(
            "agent starting",
            boot_id=record.boot.boot_id,
            boot_reason=record.boot.reason,
            outbox=len(self.uplink.outbox),
        )
        for part in (self.timekeeper, self.uplink, self.announcer, self.reporter, self.commands, self.link):
            await stack.enter_async_context(part)
        updater = self._updater(booted)
        self.ota_host.updater = updater
        stack.push_async_callback(updater.close)
        updater.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stack is not None:  # not halted, not stopped already
            await self.uplink.goodbye()
        await self.aclose()

    async def halt(self) -> None:
        """Stop dead, as a power cut would: no goodbye, no clean-stop record, work left where it
        was. For simulators and tests; on a board the power does this."""
        self._halted = True
        await self.aclose()

    def _stopped(self, record: BootRecord) -> None:
        if not self._halted and not self.restart.pending:
            record.stopped_cleanly()

    def _updater(self, booted: BootChoice) -> Updater:
        config = self.live.current
        release_keys = [decode_public_key(k) for k in config.release_keys]
        return Updater(
            device_id=self.device_id,
            model=config.model,
            state_dir=config.state_dir,
            boot_control=self.boot_control,
            booted=booted,
            release_keys={key_id_of(k): k for k in release_keys},
            host=self.ota_host,
            clock=self.clock,
            policy=UpdatePolicy(
                download_attempts=config.ota_download_attempts,
                retry_initial_s=config.ota_retry_initial_s,
                max_rate_bps=config.ota_max_rate_bps,
                trial_boots=config.ota_trial_boots,
                health_timeout_s=config.ota_health_timeout_s,
                payload=config.ota_payload,
                install_rate_bps=config.ota_install_rate_bps,
            ),
            transport=self._http_transport,
        )

    # -- the link's callbacks --------------------------------------------------------------

    async def _deliver(self, delivery: Delivery) -> None:
        await self.downlink.deliver(delivery)

    async def _on_connect(self) -> None:
        await self.uplink.on_connect()

    async def _refused(self, reason: str) -> bool:
        """The broker refused our password: say why if it is the clock, and correct it."""
        detail, corrected = await self.timekeeper.explain_refusal(reason)
        self._log.warning("broker refused the connect", reason=reason, why=detail)
        return corrected

    def _verified(self, message: Signed) -> None:
        self.timekeeper.observe_signed(message.ts, message.describe())

    def _hello(self) -> Hello:
        config = self.live.current
        return Hello(
            device_id=self.device_id,
            ts=self.clock.now_ms(),
            model=config.model,
            serial=config.serial or self.device_id,
            firmware=config.firmware,
            boot_id=self.boot.boot_id if self.boot else "",
            boot_reason=self.boot.reason if self.boot else None,
            slot=config.slot,
            capabilities=[*CAPABILITIES, SIGNED_REPORTS] if self.uplink.signs else CAPABILITIES,
            build=BUILD_ID,
        )
