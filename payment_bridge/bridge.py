"""The bridge service: accept a notification, record it, announce it, follow the acks.

    async with PaymentBridge(store, endpoint, signer, backend_key, client_id=..., platform_keys=keys) as bridge:
        recorded = await bridge.accept("backend", body, headers)   # or alipay, wechatpay, unionpay

Each `accept_*` returns only after the payment is durably recorded (and raises
`NotificationRejected`, after recording the rejection, for anything refused). Announces go out
right away; a retry loop republishes any without an ack after `ack_timeout_s`, until the
announce's TTL, after which the delivery is counted as missed.

A device's ack counts only if its device signed it (`ReportAuthority`, when given): a forged or
wrongly signed one is quarantined and changes nothing. No ack can hold the others: a write the
database refuses for the data's sake is split until the bad ack is alone, which is quarantined
and acknowledged; the rest are stored (`db.isolate.write_apart`). Only an outage keeps acks for
another try.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from firmware_protocols import topics
from firmware_protocols.announce_wire import signed_announce
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import Ack, AnnounceKind, Channel
from firmware_protocols.signing import Signer
from fleet_server.db import failures
from fleet_server.db.isolate import write_apart
from fleet_server.devices.bindings import Alert, Binding, Bindings
from fleet_server.identity.reports import ReportAuthority
from fleet_server.quarantine.store import Quarantine
from mqtt_link.errors import LinkDown
from mqtt_link.link import Delivery
from mqtt_link.routing import Inbound, Router, consumer_link
from mqtt_link.tasks import Component, spawn
from payment_bridge import doors
from payment_bridge.coalesce import Coalescer, CoalescerClosed
from payment_bridge.doors import Door
from payment_bridge.errors import NotificationRejected
from payment_bridge.keyring import PlatformKeys
from payment_bridge.notifications import PaymentNotice
from payment_bridge.queries import STALE
from payment_bridge.store import AckReceived, NewPayment, PaymentStore, PendingDelivery, Recorded

log = structlog.get_logger(__name__)

# How often the retry loop looks for unacked deliveries. Small against the ack timeout, large
# against the cost of its one indexed query.
RETRY_SCAN_S = 1.0
# A device ack that could not be stored (database away) is tried again after this long.
ACK_RETRY_S = 1.0
# On shutdown, how long announces already handed to the connection may take to reach the broker.
PUBLISH_DRAIN_S = 5.0


@dataclass(slots=True)
class BridgeStats:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    published: int = 0
    republished: int = 0
    publish_failures: int = 0
    acks: int = 0
    signed_acks: int = 0
    stray_acks: int = 0
    poisoned_acks: int = 0  # refused by the database: quarantined


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class PaymentBridge(Component):
    def __init__(
        self,
        store: PaymentStore,
        endpoint: BrokerEndpoint,
        signer: Signer,
        backend_key: RSAPublicKey,
        *,
        client_id: str,
        ttl_s: int = 120,
        max_age_s: int = 300,
        ack_timeout_s: float = 10.0,
        platform_keys: PlatformKeys | None = None,
        share_group: str | None = None,
        quarantine: Quarantine | None = None,
        authority: ReportAuthority | None = None,
    ) -> None:
        """`authority`: checks each ack's signature (None: every ack is believed)."""
        self._store = store
        self.bindings = Bindings(store.pool)
        self.quarantine = quarantine or Quarantine(store.pool)
        self._holding: set[asyncio.Future[None]] = set()
        self._keys = platform_keys or PlatformKeys()
        self._signer = signer
        self._backend_key = backend_key
        self._ttl = timedelta(seconds=ttl_s)
        self._max_age = timedelta(seconds=max_age_s)
        self._ack_timeout = timedelta(seconds=ack_timeout_s)
        self.stats = BridgeStats()
        # Group commit: notifications and acks that arrive while a write is in flight share the
        # next one. One writer each: at 1,000/s a batch takes about a millisecond, and a second
        # payment writer measured no better (bench announce, issue 9).
        self._payments: Coalescer[NewPayment, Recorded] = Coalescer(
            store.record_payments, key=lambda p: p.notice.payment_id, name="payments"
        )
        self._acks: Coalescer[AckReceived, bool | Exception] = Coalescer(
            self._record_acks, key=lambda a: (a.ack.payment_id, a.ack.device_id), name="acks"
        )
        self.acks_in = Router(
            "bridge",
            topics.Direction.UP,
            on_reject=self.quarantine.hook("bridge"),
            verify=authority.verify if authority is not None else None,
        )
        self.acks_in.route(topics.Up.ACK, Ack, self._on_ack)
        # Acks change only the database, so any bridge of a shared group may take any ack.
        self._link = consumer_link(
            self.acks_in,
            endpoint,
            client_id=client_id,
            share_group=share_group,
            # A device's ack is acknowledged to the broker once it is stored: a bridge that dies
            # in between has the broker send it again rather than losing it.
            manual_ack=True,
        )

    async def _start(self, stack: AsyncExitStack) -> None:
        # Unwound in reverse: the retry loop stops, the payment writer answers what it holds,
        # announces already handed to the connection reach the broker (any left stay pending in
        # the database and the next bridge publishes them), the link closes, the acks in flight
        # are stored.
        await stack.enter_async_context(self._acks)
        await stack.enter_async_context(self._link)
        stack.push_async_callback(self._link.drain, PUBLISH_DRAIN_S)
        await stack.enter_async_context(self._payments)
        spawn(stack, self._retry_loop(), name="bridge-retry")

    async def wait_connected(self, timeout_s: float) -> None:
        await self._link.wait_connected(timeout_s)

    # -- notifications in ------------------------------------------------------------------

    async def accept(
        self, door: Door, body: bytes, headers: Mapping[str, str], *, received_at: datetime | None = None
    ) -> Recorded:
        """A notification from `door` (`doors`); `headers` with lower-case names."""
        at = received_at or datetime.now(tz=UTC)

        def verify() -> PaymentNotice:
            return doors.verify(door, body, headers, keys=self._keys, backend_key=self._backend_key, now=at)

        return await self._accept(door, verify, body, headers, at)

    async def accept_backend(self, body: bytes, headers: Mapping[str, str], **kw: datetime) -> Recorded:
        return await self.accept("backend", body, headers, **kw)

    async def accept_alipay(self, body: bytes, headers: Mapping[str, str], **kw: datetime) -> Recorded:
        return await self.accept("alipay", body, headers, **kw)

    async def accept_wechatpay(self, body: bytes, headers: Mapping[str, str], **kw: datetime) -> Recorded:
        return await self.accept("wechatpay", body, headers, **kw)

    async def accept_unionpay(self, body: bytes, headers: Mapping[str, str], **kw: datetime) -> Recorded:
        return await self.accept("unionpay", body, headers, **kw)

    async def _accept(
        self,
        source: str,
        verify: Callable[[], PaymentNotice],
        body: bytes,
        headers: Mapping[str, str],
        received_at: datetime | None,
    ) -> Recorded:
        """Verify, record durably, then announce; returns only once the payment is recorded."""
        received_at = received_at or datetime.now(tz=UTC)
        try:
            notification = verify()
        except NotificationRejected as exc:
            self.stats.rejected += 1
            log.warning("notification rejected", source=source, code=exc.code, reason=exc.reason)
            await self._store.record_rejected(
                source=source, code=exc.code, reason=exc.reason, body=body, headers=headers, received_at=received_at
            )
            raise
        # Paid long before it reached us (a platform's late retry, a backlog): recorded, listed
        # for the merchant, and not announced; a fresh one's TTL counts from now.
        age_s = (received_at - notification.paid_at).total_seconds()
        stale = notification.kind is not None and age_s > self._max_age.total_seconds()
        if stale:
            log.warning("payment too old to announce; recorded only", payment_id=notification.payment_id, age_s=age_s)
        new = NewPayment(notification, source, received_at, received_at + self._ttl, STALE if stale else None)
        # A refund is recorded on its own, against its payment (locked); payments share batches.
        if notification.refund_of is not None:
            recorded = await self._store.record_refund(new)
        else:
            recorded = await self._payments.submit(new)
        if not recorded.is_new:
            self.stats.duplicates += 1
            log.info("notification repeated; already recorded", source=source, payment_id=notification.payment_id)
            return recorded
        self.stats.accepted += 1
        if notification.kind is not None and not stale:
            if recorded.merchant_id is None:
                log.warning(
                    "payment for no merchant of ours; recorded, not announced",
                    payment_id=notification.payment_id,
                    given_merchant_id=notification.merchant_id,
                    platform_merchant_id=notification.platform_merchant_id,
                )
            elif not recorded.device_ids:
                log.warning(
                    "payment has no bound device", payment_id=notification.payment_id, merchant_id=recorded.merchant_id
                )
            expires_at = received_at + self._ttl
            now = datetime.now(tz=UTC)
            # Handed to the broker connection without waiting: the platform's answer waits only
            # for the database, never for the broker. What does not reach a device, the retry
            # loop publishes again.
            for device_id in recorded.device_ids:
                published = self._publish(
                    PendingDelivery(
                        payment_id=notification.payment_id,
                        device_id=device_id,
                        merchant_id=recorded.merchant_id or "",
                        amount_fen=recorded.amount_fen if recorded.amount_fen is not None else notification.amount_fen,
                        channel=notification.channel.value,
                        kind=notification.kind.value,
                        paid_at=notification.paid_at,
                        received_at=received_at,
                        expires_at=expires_at,
                    ),
                    now,
                )
                self.stats.published += published
        return recorded

    # -- bindings --------------------------------------------------------------------------

    async def bind(self, device_id: str, merchant_id: str) -> Binding:
        """Bind a registered device to a registered merchant; the device says 设备绑定成功."""
        binding, alert = await self.bindings.bind(device_id, merchant_id, ttl=self._ttl)
        if alert is not None:
            self.publish_alert(alert)
        return binding

    async def unbind(self, device_id: str) -> None:
        """Unbind a device; it says 设备已解绑."""
        self.publish_alert(await self.bindings.unbind(device_id, ttl=self._ttl))

    def publish_alert(self, alert: Alert) -> None:
        """Publish an alert recorded elsewhere (a binding, the device lifecycle's install) now;
        if the broker is away the retry scan publishes it later, as any announce."""
        delivery = PendingDelivery(
            payment_id=alert.alert_id,
            device_id=alert.device_id,
            merchant_id=alert.merchant_id,
            amount_fen=0,
            channel=Channel.OTHER.value,
            kind=AnnounceKind.ALERT.value,
            paid_at=alert.at,
            received_at=alert.at,
            expires_at=alert.expires_at,
            alert=alert.code.value,
        )
        self._publish(delivery, datetime.now(tz=UTC))

    # -- announces out ---------------------------------------------------------------------

    def _announce_for(self, delivery: PendingDelivery, now: datetime) -> bytes:
        now_ms = _ms(now)
        return signed_announce(
            self._signer,
            device_id=delivery.device_id,
            ts=now_ms,
            payment_id=delivery.payment_id,
            amount_fen=delivery.amount_fen,
            channel=delivery.channel,
            kind=delivery.kind,
            paid_at=_ms(delivery.paid_at),
            alert=delivery.alert,
            issued_at=now_ms,
            ttl_s=max(1, int((delivery.expires_at - now).total_seconds())),
        )

    def _publish(self, delivery: PendingDelivery, now: datetime) -> bool:
        """Sign and publish one announce; False if the broker is away (the delivery stays
        pending in the database and the retry loop publishes it when the broker is back)."""
        announce = self._announce_for(delivery, now)
        try:
            self._link.publish_nowait(topics.down(delivery.device_id, topics.Down.ANNOUNCE), announce)
        except LinkDown as exc:
            self.stats.publish_failures += 1
            log.warning(
                "announce not published; will retry",
                payment_id=delivery.payment_id,
                device_id=delivery.device_id,
                error=str(exc),
            )
            return False
        return True

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY_SCAN_S)
            now = datetime.now(tz=UTC)
            try:
                republished = []
                for delivery in await self._store.due_for_retry(now=now, ack_timeout=self._ack_timeout):
                    log.info(
                        "announce unacked; republishing", payment_id=delivery.payment_id, device_id=delivery.device_id
                    )
                    if self._publish(delivery, now):
                        republished.append(delivery)
                await self._store.mark_published(republished, now)
                self.stats.republished += len(republished)
                missed = await self._store.mark_missed(now=now, grace=self._ack_timeout)
                if missed:
                    log.warning("deliveries missed their TTL", count=missed)
            except Exception:
                # A database blip must not end retries for good; the next scan tries again.
                log.exception("retry scan failed")

    # -- acks back -------------------------------------------------------------------------

    async def _on_ack(self, inbound: Inbound[Ack]) -> None:
        # Not awaited: the next ack is read while this one waits for its batch to commit.
        self._store_ack(AckReceived(inbound.message, datetime.now(tz=UTC), inbound.signed), inbound.delivery)

    async def _record_acks(self, acks: Sequence[AckReceived]) -> list[bool | Exception]:
        """Each ack recorded (True: its delivery exists), or the error that keeps it from ever
        being recorded. An outage raises: every ack of the write is tried again."""
        known: dict[int, bool | Exception] = {}

        async def write(part: Sequence[AckReceived]) -> None:
            for item, found in zip(part, await self._store.record_acks(part), strict=True):
                known[id(item)] = found

        for item, exc in await write_apart(acks, write):
            known[id(item)] = exc
        return [known[id(item)] for item in acks]

    def _store_ack(self, item: AckReceived, delivery: Delivery) -> None:
        receipt, topic = delivery.receipt, delivery.topic
        assert receipt is not None  # noqa: S101 - the ack link acknowledges by hand (manual_ack).

        def stored(future: asyncio.Future[bool | Exception]) -> None:
            if future.cancelled():
                return
            if (exc := future.exception()) is not None:
                # Not acknowledged to the broker; kept and tried again while the link lasts.
                log.warning("ack not stored; will retry", topic=topic, error=str(exc), retry_in_s=ACK_RETRY_S)
                asyncio.get_running_loop().call_later(ACK_RETRY_S, self._store_ack, item, delivery)
                return
            result = future.result()
            if isinstance(result, Exception):
                self.stats.poisoned_acks += 1
                why = failures.describe(result)
                hold = asyncio.ensure_future(self.quarantine.hold("bridge", delivery, "store", why))
                self._holding.add(hold)
                hold.add_done_callback(self._holding.discard)
                hold.add_done_callback(lambda _: receipt.ack())
                return
            receipt.ack()
            if result:
                self.stats.acks += 1
                self.stats.signed_acks += item.signed
            else:
                self.stats.stray_acks += 1
                log.warning("ack for unknown delivery", topic=topic, payment_id=item.ack.payment_id)

        try:
            self._acks.submit_nowait(item).add_done_callback(stored)
        except CoalescerClosed:
            return  # shutting down: unacknowledged, so the broker sends it to a bridge that runs
