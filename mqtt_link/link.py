"""A persistent MQTT session that keeps itself connected.

Both the device and the servers talk to the broker through a `Link`: one async context manager
owning one task that connects, subscribes, hands every message to a callback, and on any loss
reconnects with capped, jittered exponential backoff. The session is persistent (clean session
false on MQTT 3.1.1; clean start false with a session expiry on MQTT 5), so the broker queues
QoS 1 messages while the link is down and nothing sent to a device in the meantime is lost.
TLS (`mqtts://`) uses the system's trust store or a configured CA, and a client certificate
where the broker asks for mutual TLS.

Every message is handed to the handler as a `Delivery` (topic, payload, receipt). By default a
QoS 1 message is acknowledged as soon as it is read and the receipt is None. A consumer that must
not lose what it has not yet stored (the fleet ingest, the bridge's acks) opens the link with
`manual_ack` and calls `delivery.receipt.ack()` once the message is durable; a message that was
never acknowledged is sent again by the broker when the session resumes. A receipt belongs to the
connection that delivered the message: after a reconnect the broker redelivers it and the old
receipt is void.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTT_ERR_SUCCESS, error_string
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_protocols.endpoint import BrokerEndpoint
from mqtt_link.backoff import Backoff
from mqtt_link.errors import LinkDown, TlsSetupError
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

ConnectHandler = Callable[[], Awaitable[None]]
MqttVersion = Literal["3.1.1", "5"]

# A QoS 1 publish waits for the broker's PUBACK at most this long before the link is
# considered broken; a healthy broker answers in milliseconds, a 4G link in well under a second.
PUBLISH_TIMEOUT_S = 10.0
# After a refusal the caller fixed (a corrected clock), the next try comes this soon.
REFUSED_RETRY_S = 0.5


@dataclass(frozen=True, slots=True)
class Session:
    """How the broker keeps this client's session: persistent unless `clean`, for `expiry_s`
    (MQTT 5; on 3.1.1 the broker decides how long). `receive_maximum` (MQTT 5) is how many
    unacknowledged QoS 1 messages the broker may have in flight to us; on 3.1.1 the broker's
    own setting decides (Mosquitto `max_inflight_messages`, 20 by default)."""

    clean: bool = False
    mqtt_version: MqttVersion = "3.1.1"
    expiry_s: int = 7 * 24 * 3600
    receive_maximum: int | None = None


class Receipt(Protocol):
    """Acknowledges one received message to the broker, once it is safe to."""

    def ack(self) -> bool:
        """True once acknowledged; False if the connection that brought the message is gone,
        so the broker will deliver it again."""
        ...


@dataclass(frozen=True, slots=True)
class BrokerReceipt:
    """A receipt for a QoS 1 message: the link and the connection it came on, and its id."""

    link: Link
    client: aiomqtt.Client
    mid: int
    qos: int

    def ack(self) -> bool:
        """Acknowledge the message to the broker (QoS 0 needs none); False if the connection
        that brought it is gone, so the broker will deliver it again."""
        if self.qos == 0:
            return True
        if self.client is not self.link.current_client or not self.link.connected.is_set():
            return False
        # aiomqtt does not expose paho's application-controlled acknowledgement yet
        # (empicano/aiomqtt#345); the paho client under it has it.
        self.client._client.ack(self.mid, self.qos)
        return True


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as it arrived: its topic, its payload, and (with `manual_ack`) the receipt
    that acknowledges it."""

    topic: str
    payload: bytes
    receipt: Receipt | None = None


MessageHandler = Callable[[Delivery], Awaitable[None]]


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: who signed the certificate is checked, not its dates.
NO_CHECK_TIME = 0x200000


def tls_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    *,
    check_dates: bool = True,
) -> ssl.SSLContext:
    """A client TLS context: verify the broker (against `ca_file` if given), and present a client
    certificate when both `cert_file` and `key_file` are given. `check_dates=False` leaves the
    certificate's dates to the caller (`Link(cert_clock=...)`), for a board whose system clock
    is wrong while its own corrected clock is right."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if not check_dates:
            context.verify_flags |= NO_CHECK_TIME
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot set up TLS (ca {ca_file}, cert {cert_file}): {exc}") from exc
    return context


class Link(Component):
    def __init__(  # noqa: PLR0913 - one keyword per connection option, as aiomqtt.Client has.
        self,
        endpoint: BrokerEndpoint,
        *,
        client_id: str,
        subscriptions: list[str],
        on_message: MessageHandler,
        on_connect: ConnectHandler | None = None,
        will: aiomqtt.Will | Callable[[], aiomqtt.Will] | None = None,
        keepalive_s: int = 30,
        backoff: Backoff | None = None,
        max_inflight: int = 100,
        session: Session | None = None,
        tls: ssl.SSLContext | None = None,
        manual_ack: bool = False,
        password: Callable[[], str | None] | None = None,
        on_refused: Callable[[str], Awaitable[bool]] | None = None,
        cert_clock: Callable[[], float] | None = None,
    ) -> None:
        """`on_refused(reason)`: the broker refused the credentials at CONNECT (MQTT 3.1.1 says
        only "not authorised"); True if the caller fixed something (its clock) and a retry soon
        may pass. `cert_clock`: the time (unix s) the broker's TLS certificate dates are checked
        against, for a context made with `check_dates=False`."""
        self.endpoint = endpoint
        self._on_refused = on_refused
        self._cert_clock = cert_clock
        # Called at every connect: a device's password is signed with the time it is sent.
        self._password = password
        self._manual_ack = manual_ack
        self.client_id = client_id
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connect = on_connect
        self._will = will
        self._keepalive = keepalive_s
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._max_inflight = max_inflight
        self._session = session or Session()
        self._tls = tls if tls is not None else (ssl.create_default_context() if endpoint.tls else None)
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self._log = log.bind(client_id=client_id, broker=endpoint.url())

    async def _start(self, stack: AsyncExitStack) -> None:
        spawn(stack, self._run(), name=f"link:{self.client_id}")

    async def close(self) -> None:
        """Leave the broker (the same as leaving the context)."""
        await self.aclose()

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout_s)

    @property
    def current_client(self) -> aiomqtt.Client | None:
        """The client of the connection now up, if any (a receipt of another one is void)."""
        return self._client

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait for the broker to take it (QoS 1); raise `LinkDown` if it cannot."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise LinkDown(f"{self.client_id}: not connected to {self.endpoint.url()}")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            raise LinkDown(f"{self.client_id}: publish to {topic} failed: {exc}") from exc

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Hand a message to the client and return without waiting for the broker's PUBACK; the
        client retransmits it while the connection lasts. For a sender whose own records resend
        what is never answered (the bridge's deliveries): it saves a task and a wait per message.
        Raise `LinkDown` if not connected."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise LinkDown(f"{self.client_id}: not connected to {self.endpoint.url()}")
        # aiomqtt's publish is this call plus the wait for the PUBACK.
        info = client._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise LinkDown(f"{self.client_id}: publish to {topic} failed: {error_string(info.rc)}")

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the broker has acknowledged everything published (at most `timeout_s`);
        False if some is still unacknowledged."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (client := self._client) is not None and client._client._out_messages:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _client_for(self) -> aiomqtt.Client:
        session: dict[str, Any]
        if self._session.mqtt_version == "5":
            # MQTT 5 splits 3.1.1's clean session in two: keep the session (clean start false)
            # and say how long the broker keeps it for a device that stays away.
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0 if self._session.clean else self._session.expiry_s
            if self._session.receive_maximum is not None:
                properties.ReceiveMaximum = self._session.receive_maximum
            session = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": self._session.clean,
                "properties": properties,
            }
        else:
            session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": self._session.clean}
        client = aiomqtt.Client(
            self.endpoint.host,
            self.endpoint.port,
            # Some brokers (amqtt) keep a persistent session's offline queue only for clients that
            # identify themselves; without configured credentials the client id is the username.
            username=self.endpoint.username or self.client_id,
            password=self._password() if self._password is not None else self.endpoint.password,
            identifier=self.client_id,
            # A callable will is asked for at every connect: each connection gets its own.
            will=self._will() if callable(self._will) else self._will,
            keepalive=self._keepalive,
            tls_context=self._tls,
            max_inflight_messages=self._max_inflight,
            timeout=PUBLISH_TIMEOUT_S,
            # paho leaves Nagle's algorithm on: an ack published right after a PUBACK then waits
            # for the peer's delayed TCP ACK (40 ms on Linux). Announcements cannot wait for that.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            **session,
        )
        # aiomqtt logs a warning (and copies its table of calls) on every publish while more
        # than 10 wait for their PUBACK; a server has hundreds in flight by design.
        client.pending_calls_threshold = 1 << 30
        if self._manual_ack:
            # Before connecting: a resumed session's queued messages arrive right after CONNACK.
            client._client.manual_ack_set(True)  # see `ack`
        return client

    def _delivery(self, client: aiomqtt.Client, message: aiomqtt.Message) -> Delivery:
        payload = message.payload
        if not isinstance(payload, bytes):
            payload = bytes(payload) if isinstance(payload, bytearray) else b""
        receipt = BrokerReceipt(self, client, message.mid, message.qos) if self._manual_ack else None
        return Delivery(str(message.topic), payload, receipt)

    async def _deliver(self, delivery: Delivery) -> None:
        # Handlers validate their input; this is the last line that keeps one bad message
        # from taking the link down with it.
        try:
            await self._on_message(delivery)
        except Exception:  # noqa: BLE001 - any handler bug must not end the link.
            self._log.exception("message handler failed; message dropped", topic=delivery.topic)

    async def _run(self) -> None:
        while True:
            try:
                async with self._client_for() as client:
                    if self._cert_clock is not None and self._tls is not None:
                        check_certificate_dates(client, self._cert_clock())
                    self._client = client
                    for topic_filter in self._subscriptions:
                        await client.subscribe(topic_filter, qos=1)
                    self.connected.set()
                    self.connects += 1
                    self._backoff.reset()
                    self._log.info("link up", connects=self.connects)
                    if self._on_connect is not None:
                        await self._on_connect()
                    async for message in client.messages:
                        # The receipt is taken here, before any await: it names this connection.
                        await self._deliver(self._delivery(client, message))
            except (aiomqtt.MqttError, OSError, TimeoutError, LinkDown) as exc:
                delay = self._backoff.next_delay()
                if self._on_refused is not None and refused_credentials(exc) and await self._on_refused(str(exc)):
                    delay = min(delay, REFUSED_RETRY_S)
                self._log.warning("link down", error=str(exc), retry_in_s=round(delay, 2))
            else:
                delay = self._backoff.next_delay()
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(delay)


def check_certificate_dates(client: aiomqtt.Client, now_s: float) -> None:
    """Raise `LinkDown` unless the broker's certificate is valid at `now_s`."""
    sock = client._client.socket()
    cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    if not cert:
        raise LinkDown("no broker certificate to check")
    starts, ends = ssl.cert_time_to_seconds(str(cert["notBefore"])), ssl.cert_time_to_seconds(str(cert["notAfter"]))
    if not starts <= now_s <= ends:
        raise LinkDown(
            f"broker certificate not valid at {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(now_s))}"
            f" (valid {cert['notBefore']} to {cert['notAfter']})"
        )


def refused_credentials(exc: BaseException) -> bool:
    """A CONNACK that refused who we said we are: 3.1.1 codes 4 and 5, MQTT 5's 134 and 135."""
    if not isinstance(exc, MqttConnectError):
        return False
    rc = exc.rc
    code = rc if isinstance(rc, int) else getattr(rc, "value", None)
    return code in (4, 5, 134, 135)


async def probe(
    endpoint: BrokerEndpoint, *, client_id: str, tls: ssl.SSLContext | None = None, timeout_s: float = 5.0
) -> float:
    """Connect once with a clean session and leave; the round trip in ms, or `LinkDown` saying why.

    Used by the local diagnose: it must not take over the agent's own session, so `client_id`
    is a different one (the agent's id with `-diag`)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    client = aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=endpoint.username or client_id,
        password=endpoint.password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        tls_context=tls if tls is not None else (ssl.create_default_context() if endpoint.tls else None),
        timeout=timeout_s,
    )
    try:
        async with asyncio.timeout(timeout_s), client:
            return round((loop.time() - started) * 1000, 1)
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise LinkDown(f"cannot reach {endpoint.url()}: {exc or type(exc).__name__}") from exc
