"""The server processes, wired: fleet server and/or payment bridge behind one HTTP app.

    async with ServerStack(settings, parts={Part.FLEET, Part.BRIDGE}, endpoint=..., database_url=...) as stack:
        print(stack.base_url)

Each part has its own MQTT session; both share the pool and the schema. Run them in one process
(the default, the demo; an install's 设备绑定成功 goes out at once, not at the bridge's retry
scan) or as separate processes (`haodian server --parts bridge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import timedelta
from enum import StrEnum

import structlog
import uvicorn
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.signing import Signer, decode_public_key, key_id_of
from fleet_server.auth.store import AuthStore
from fleet_server.contacts.cipher import FieldCipher
from fleet_server.contacts.contacts import Contacts
from fleet_server.db.migrate import migrate, timescale_decision
from fleet_server.db.pool import open_pool
from fleet_server.devices.registry import DeviceRegistry
from fleet_server.figures.figures import FleetFigures
from fleet_server.figures.overview import FleetOverview
from fleet_server.http.app import AUTH_ROUTERS, FLEET_ROUTERS, create_app
from fleet_server.http.device_time import TimeService
from fleet_server.http.ratelimit import RateLimiter
from fleet_server.http.services import HttpPolicy, Services, services_of
from fleet_server.identity.access import server_client_id
from fleet_server.identity.reports import ReportAuthority
from fleet_server.identity.store import BrokerAuthority, DeviceCredentials
from fleet_server.ingest.batch import IngestPolicy
from fleet_server.ingest.consumer import Ingest
from fleet_server.ingest.storage import Storage
from fleet_server.ingest.telemetry import TelemetryStore
from fleet_server.inspection.inspector import Inspector
from fleet_server.inspection.site import SiteBook
from fleet_server.lifecycle.book import Lifecycle
from fleet_server.notify.channels import Channels
from fleet_server.notify.sender import Notifier
from fleet_server.ota.conductor import OtaConductor
from fleet_server.ota.routes import ReleaseKeys
from fleet_server.ota.store import OtaStore
from fleet_server.quarantine.store import Quarantine
from fleet_server.remote.remote import DeviceRemote
from haodian.embedded import BrokerTls, EmbeddedBroker
from haodian.keys import ServerKeys
from haodian.settings import Settings
from mqtt_link.tasks import Component
from payment_bridge import routes as bridge_routes
from payment_bridge.bridge import PaymentBridge
from payment_bridge.doorway import NotificationDoors
from payment_bridge.keyring import PlatformKeys
from payment_bridge.store import PaymentStore
from payment_bridge.webhook import WebhookSender

log = structlog.get_logger(__name__)


class Part(StrEnum):
    FLEET = "fleet"  # the fleet API and pages, inspector, OTA, remote commands, and an ingest
    BRIDGE = "bridge"  # payment notifications in, announces out, device acks back
    INGEST = "ingest"  # only the ingest: more consumers of the device uplink stream


# Parts that hold no state of their own and can run in any number of processes at once (their
# MQTT sessions share the stream with a shared subscription; the HTTP port is shared with
# SO_REUSEPORT). The fleet part's inspector and OTA conductor are one per fleet.
STATELESS = frozenset({Part.BRIDGE, Part.INGEST})


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process's owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_app(parts: set[Part], *, instance: str = "haodian") -> FastAPI:
    """The HTTP app of a process running `parts`: the fleet's routers and pages with the fleet
    part, the bridge's with the bridge, sign-in with every part."""
    routers = [*AUTH_ROUTERS]
    if Part.FLEET in parts:
        routers += FLEET_ROUTERS
    if Part.BRIDGE in parts:
        routers.append(bridge_routes.router)
    return create_app(routers, pages=Part.FLEET in parts, instance=instance, parts=sorted(parts))


class ServerStack(Component):
    def __init__(
        self,
        settings: Settings,
        *,
        parts: set[Part],
        endpoint: BrokerEndpoint,
        database_url: str,
        keys: ServerKeys,
    ) -> None:
        self.settings = settings
        self.parts = parts
        self.endpoint = endpoint
        self.database_url = database_url
        self.keys = keys
        self.app = build_app(parts, instance=settings.mqtt_client_prefix)
        self.services: Services = services_of(self.app)
        # Set once started: the pool and accounts of every part; the fleet part's stores.
        self.pool: AsyncConnectionPool
        self.auth: AuthStore
        self.quarantine: Quarantine
        self.reports: ReportAuthority
        self.credentials: DeviceCredentials | None = None
        self.contacts: Contacts | None = None
        self.ota_store: OtaStore | None = None
        self.ingest: Ingest | None = None
        self.inspector: Inspector | None = None
        self.bridge: PaymentBridge | None = None
        self.ota: OtaConductor | None = None
        self.remote: DeviceRemote | None = None
        self.channels: Channels | None = None
        self.lifecycle: Lifecycle | None = None
        self.notifier: Notifier | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        assert self._socket is not None, "ServerStack not started"  # noqa: S101 - programming error.
        host, port = self._socket.getsockname()[:2]
        scheme = "https" if self.settings.http_tls_cert_file else "http"
        return f"{scheme}://{host}:{port}"

    async def _start(self, stack: AsyncExitStack) -> None:
        prefix = self.settings.mqtt_client_prefix
        pool = await stack.enter_async_context(open_pool(self.database_url))
        applied = await migrate(pool)
        telemetry = TelemetryStore(
            pool,
            retention_days=self.settings.telemetry_retention_days,
            compress_after_days=self.settings.telemetry_compress_after_days,
        )
        # Partitions and policies are kept by the fleet part's inspector, whose first round runs at once.
        await telemetry.detect()
        decision = await timescale_decision(pool)
        log.info("database ready", migrations_applied=applied, timescaledb=decision.reason, **telemetry.describe())
        self.pool = pool
        self.auth = AuthStore(pool, session_ttl=timedelta(hours=self.settings.session_hours))
        self.services.add(self.auth)
        self.services.add(
            HttpPolicy(
                cookie_secure=self.settings.cookie_secure,
                login_limiter=RateLimiter(
                    per_s=self.settings.login_attempts_per_min / 60, burst=self.settings.login_attempts_per_min
                ),
                notify_limiter=RateLimiter(
                    per_s=self.settings.notifications_per_s, burst=self.settings.notifications_per_s
                ),
            )
        )
        self.services.add(TimeService(Signer(self.keys.signing_key), self.settings.device_auth_max_skew_s))
        offset = self.settings.fleet_utc_offset_min
        # One quarantine and one judge of device signatures for every consumer of this process.
        self.quarantine = Quarantine(pool)
        self.services.add(self.quarantine)
        self.reports = ReportAuthority(pool, DeviceCredentials(pool, self.keys.device_master_key))
        self.services.add(self.reports.stats)
        if self.parts & {Part.FLEET, Part.INGEST}:
            self.ingest = await stack.enter_async_context(self._ingest(pool))
            self.services.add(self.ingest.stats)
        if Part.FLEET in self.parts:
            self.credentials = DeviceCredentials(pool, self.keys.device_master_key)
            cipher = FieldCipher(self.keys.field_keys)
            self.contacts = Contacts(pool, cipher)
            self.channels = Channels(pool, cipher)
            self.services.add(self.channels)
            self.services.add(SiteBook(pool, self.contacts))
            self.lifecycle = Lifecycle(pool)
            await self.contacts.seal_legacy()
            registry = DeviceRegistry(pool)
            figures = FleetFigures(pool, fleet_utc_offset_min=offset)
            self.inspector = await stack.enter_async_context(
                Inspector(pool, self.settings.inspection, telemetry=telemetry, fleet_utc_offset_min=offset)
            )
            self.ota_store = OtaStore(pool, self.settings.ota_artifacts_dir or self.settings.data_dir / "ota-artifacts")
            release_keys = [decode_public_key(k) for k in self.settings.ota_release_keys]
            for service in (
                self.credentials,
                self.contacts,
                registry,
                figures,
                FleetOverview(registry, figures, self.inspector.tasks),
                self.inspector.tasks,
                self.lifecycle,
                self.ota_store,
                ReleaseKeys({key_id_of(k): k for k in release_keys}),
                Storage(pool, telemetry, decision),
                self.settings.inspection,
            ):
                self.services.add(service)
            self.remote = await stack.enter_async_context(
                DeviceRemote(
                    pool,
                    self.endpoint,
                    Signer(self.keys.signing_key),
                    client_id=server_client_id(prefix, "remote"),
                    share_group=_share(self.settings.mqtt_share_group, "remote"),
                    quarantine=self.quarantine,
                    authority=self.reports,
                )
            )
            self.services.add(self.remote)
        if Part.BRIDGE in self.parts:
            store = PaymentStore(pool)
            self.services.add(store)
            self.bridge = await stack.enter_async_context(self._bridge(store))
            self.services.add(self.bridge)
            if self.lifecycle is not None:
                self.lifecycle.on_alert = self.bridge.publish_alert
            if self.settings.backend_webhook_url:
                await stack.enter_async_context(
                    WebhookSender(pool, self.settings.backend_webhook_url, Signer(self.keys.signing_key))
                )
        await self._wait_broker()
        await self._start_http(stack)
        await self._start_after_http(stack)
        log.info("server ready", parts=sorted(self.parts), http=self.base_url, broker=self.endpoint.url())

    async def _start_after_http(self, stack: AsyncExitStack) -> None:
        """What names this server's own address: OTA offers (where to download) and the
        notifier (links to tasks)."""
        prefix = self.settings.mqtt_client_prefix
        if self.ota_store is not None:
            # After the HTTP server: offers name it as the place to download artifacts from.
            conductor = await stack.enter_async_context(
                OtaConductor(
                    self.ota_store,
                    self.endpoint,
                    Signer(self.keys.signing_key),
                    artifact_base_url=self.settings.ota_artifact_base_url or self.base_url,
                    client_id=server_client_id(prefix, "ota"),
                    round_s=self.settings.ota_round_s,
                    share_group=_share(self.settings.mqtt_share_group, "ota"),
                    quarantine=self.quarantine,
                    authority=self.reports,
                )
            )
            self.ota = conductor
            self.services.add(conductor)
            await conductor.wait_connected(30)
        if self.channels is not None:
            self.notifier = await stack.enter_async_context(
                Notifier(
                    self.pool,
                    self.channels.cipher,
                    base_url=self.settings.public_base_url or self.base_url,
                    poll_s=self.settings.notify_poll_s,
                )
            )

    def _ingest(self, pool: AsyncConnectionPool) -> Ingest:
        return Ingest(
            pool,
            self.endpoint,
            client_id=server_client_id(self.settings.mqtt_client_prefix, "ingest"),
            batch_size=self.settings.ingest_batch_size,
            flush_s=self.settings.ingest_flush_s,
            policy=IngestPolicy(
                utc_offset_min=self.settings.fleet_utc_offset_min, cell_learning_days=self.settings.cell_learning_days
            ),
            ack_after_commit=self.settings.acks_after_commit,
            share_group=_share(self.settings.mqtt_share_group, "ingest"),
            quarantine=self.quarantine,
            authority=self.reports,
        )

    async def _start_http(self, stack: AsyncExitStack) -> None:
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say they
        # are TCP. Without it every keep-alive response waited for the client's delayed ACK
        # (Nagle): 40-45 ms on each API answer, 5 ms with it (bench bridge, issue 6).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.settings.http_reuse_port:
            # Workers of `haodian server --workers N` all listen on one port; the kernel spreads
            # the connections over them.
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._socket.bind((self.settings.http_host, self.settings.http_port))
        stack.callback(self._socket.close)
        tls = self.settings
        config = uvicorn.Config(
            NotificationDoors(self.app, self.services),  # payments straight in; the rest to the app
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=str(tls.http_tls_cert_file) if tls.http_tls_cert_file else None,
            ssl_keyfile=str(tls.http_tls_key_file) if tls.http_tls_key_file else None,
        )
        self._http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[self._socket]), name="http")
        stack.push_async_callback(self._stop_http)
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.02)

    def _bridge(self, store: PaymentStore) -> PaymentBridge:
        return PaymentBridge(
            store,
            self.endpoint,
            Signer(self.keys.signing_key),
            self.keys.backend_public_key,
            client_id=server_client_id(self.settings.mqtt_client_prefix, "bridge"),
            ttl_s=self.settings.announce_ttl_s,
            max_age_s=self.settings.announce_max_age_s,
            ack_timeout_s=self.settings.ack_timeout_s,
            platform_keys=PlatformKeys(
                alipay_public_key_file=self.settings.alipay_public_key_file,
                wechatpay_keys_dir=self.settings.wechatpay_keys_dir,
                wechatpay_apiv3_key_file=self.settings.wechatpay_apiv3_key_file,
                wechatpay_mchids=frozenset(self.settings.wechatpay_mchids),
                alipay_app_ids=frozenset(self.settings.alipay_app_ids),
                unionpay_root_cert_file=self.settings.unionpay_root_cert_file,
                unionpay_middle_cert_file=self.settings.unionpay_middle_cert_file,
            ),
            share_group=_share(self.settings.mqtt_share_group, "bridge"),
            quarantine=self.quarantine,
            authority=self.reports,
        )

    async def _wait_broker(self) -> None:
        for part in (self.ingest, self.bridge, self.remote):
            if part is not None:
                try:
                    await part.wait_connected(30)
                except TimeoutError:
                    hint = ""
                    if part is self.ingest and self.ingest.ack_after_commit:
                        hint = (
                            " (the ingest connects with MQTT 5 to acknowledge only what it has stored; for an"
                            " MQTT 3.1.1 broker such as `haodian broker`, set HAODIAN_INGEST_ACK_AFTER_COMMIT=false)"
                        )
                    raise RuntimeError(
                        f"cannot reach the MQTT broker at {self.endpoint.url()} within 30 s{hint}"
                    ) from None

    async def _stop_http(self) -> None:
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task


def _share(group: str | None, part: str) -> str | None:
    """The shared-subscription group of one part: ingest and bridge each get the whole stream."""
    return None if group is None else f"{group}-{part}"


# The servers' own account on the embedded broker; its password is made at each start.
SERVER_ACCOUNT = "haodian-server"


async def start_embedded_broker(
    stack: AsyncExitStack, settings: Settings, *, database_url: str, keys: ServerKeys
) -> tuple[EmbeddedBroker, BrokerEndpoint]:
    """Start the embedded broker on `stack`: with access control (devices by their credentials
    in the database, the servers by an account made now) unless the settings turn it off, and
    with its TLS listener if a certificate is configured. Returns the broker and the endpoint the
    server parts connect to."""
    authority = None
    endpoint_auth: tuple[str | None, str | None] = (None, None)
    if settings.broker_access_control:
        pool = await stack.enter_async_context(open_pool(database_url, max_size=4))
        await migrate(pool)
        password = secrets.token_urlsafe(32)
        authority = BrokerAuthority(
            DeviceCredentials(pool, keys.device_master_key),
            {SERVER_ACCOUNT: password},
            max_skew_s=settings.device_auth_max_skew_s,
        )
        endpoint_auth = (SERVER_ACCOUNT, password)
    tls = None
    if settings.mqtt_tls_cert_file and settings.mqtt_tls_key_file:
        tls = BrokerTls(settings.mqtt_tls_cert_file, settings.mqtt_tls_key_file, settings.mqtt_tls_port)
    broker = await stack.enter_async_context(EmbeddedBroker(authority=authority, tls=tls))
    return broker, BrokerEndpoint(broker.host, broker.port, *endpoint_auth)
