"""What the bridge keeps in PostgreSQL: payments, per-device deliveries, rejected notifications.

A payment is written, with a delivery row for each device bound to its merchant, in one
transaction before the platform hears "success": nothing acknowledged is ever lost, and a retry
of the same notification finds the payment already there and announces nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, computed_field

from firmware_protocols.messages import HEARD, Ack, AnnounceKind
from fleet_server.db.fetch import execute, fetch_dicts, fetch_models, fetch_rows
from fleet_server.db.hierarchy import WHOLE_FLEET, Reach, reach_params
from fleet_server.figures.recent import Recent
from payment_bridge import queries
from payment_bridge.notifications import PaymentNotice
from payment_bridge.rows import ack_rows, record_statement

SUMMARY_REUSE_S: Final = 10.0

# Statuses that mean the merchant heard it (a duplicate ack: the device played it before).


@dataclass(frozen=True, slots=True)
class Recorded:
    payment_id: str
    is_new: bool
    device_ids: list[str]
    merchant_id: str | None = None  # routed to (when new); None: no merchant of ours is known
    amount_fen: int | None = None  # what it announces (a refund: the amount it refunds)


@dataclass(frozen=True, slots=True)
class NewPayment:
    """A verified notification on its way to the database."""

    notice: PaymentNotice
    source: str
    received_at: datetime
    expires_at: datetime
    held: str | None = None  # why it is recorded and not announced (`queries.STALE`), None: announce it


@dataclass(frozen=True, slots=True)
class AckReceived:
    ack: Ack
    acked_at: datetime
    signed: bool = False  # verified as its device's (`ReportAuthority`)


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    payment_id: str
    device_id: str
    merchant_id: str
    amount_fen: int
    channel: str
    kind: str
    paid_at: datetime
    received_at: datetime
    expires_at: datetime
    alert: str | None = None  # an alert's code (AlertCode), kind 'alert'


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class DeliverySummary(BaseModel):
    payments: int
    unrouted_payments: int
    deliveries: int
    delivered: int
    pending: int
    missed: int
    refused: int
    failed: int
    delivery_rate: float | None
    # Payment notification received → the speaker started playing (device clock).
    latency_ms: Percentiles
    # Notification received → the device's ack back at the bridge (one clock: an upper bound).
    ack_round_trip_ms: Percentiles
    # The same figures of refunds (announced as 退款), apart: the figures above are payments'.
    refunds: DeliverySummary | None = None


class DeliveryView(BaseModel):
    device_id: str
    status: str
    attempts: int
    acked_at: datetime | None
    play_started_at: datetime | None
    text: str | None
    reason: str | None


class RefundView(BaseModel):
    payment_id: str  # the refund's own record
    amount_fen: int
    kind: str  # refund (announced), or none (recorded only: abnormal, closed)
    status: str
    refunded_at: datetime
    received_at: datetime


class PaymentView(BaseModel):
    """A payment, or a refund's own record (`refund_of` names the payment), with its deliveries.
    A payment's `status` says where it stands (SUCCESS, REFUNDED_PART, REFUNDED, or the
    platform's) and `refunds` are its refunds, oldest first."""

    payment_id: str
    merchant_id: str | None  # None: no merchant of ours was found (platform_merchant_id names it there)
    platform_merchant_id: str | None = None
    amount_fen: int
    channel: str
    kind: str
    status: str
    paid_at: datetime
    received_at: datetime
    deliveries: list[DeliveryView]
    refund_of: str | None = None
    refunded_fen: int = 0
    refunds: list[RefundView] = []


class NotAnnounced(BaseModel):
    payment_id: str
    merchant_id: str | None
    platform_merchant_id: str | None
    amount_fen: int
    channel: str
    paid_at: datetime
    received_at: datetime
    reason: str  # no_bound_device, unknown_merchant, missed, expired, refused, failed
    concluded_at: datetime
    # When the backend acknowledged the webhook; None while it is still being told.
    backend_told_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def code(self) -> str:
        """The reason as a code for programs: UNKNOWN_MERCHANT, NO_BOUND_DEVICE, MISSED, ..."""
        return self.reason.upper()


class PaymentStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        # The whole fleet's summary of the last N hours, shared for a while once it is expensive.
        self._fleet_summaries: dict[int, Recent[DeliverySummary]] = {}

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    async def record_rejected(
        self, *, source: str, code: str, reason: str, body: bytes, headers: Mapping[str, str], received_at: datetime
    ) -> None:
        await execute(
            self._pool,
            queries.RECORD_REJECTED,
            (
                received_at,
                source,
                code,
                reason[:1000].replace("\x00", "\ufffd"),  # kept as text can hold it: what was refused, not lost
                body[:65536].decode("utf-8", "replace").replace("\x00", "\ufffd"),
                json.dumps(dict(headers)),
            ),
        )

    async def record_payment(
        self, notice: PaymentNotice, *, source: str, received_at: datetime, ttl: timedelta
    ) -> Recorded:
        """Durably record one payment and its deliveries; see `record_payments`."""
        (recorded,) = await self.record_payments([NewPayment(notice, source, received_at, received_at + ttl)])
        return recorded

    async def record_payments(self, payments: Sequence[NewPayment]) -> list[Recorded]:
        """Durably record payments and their deliveries, idempotent by payment id; one answer
        per payment, in order. Each payment id at most once per call (the coalescer sees to it).

        A payment recorded without an announcement (Alipay's WAIT_BUYER_PAY) is taken again by
        the first notification of the same trade that announces; anything later is a repeat.
        One statement for the whole batch: one round trip and one commit however many there are."""
        async with self._pool.connection() as conn:
            return await _record(conn, payments)

    async def record_refund(self, refund: NewPayment) -> Recorded:
        """Record a refund as its own payment record, once (by its id), with deliveries to its
        payment's merchant's devices, and add it to the payment it refunds, all in one
        transaction; refunds of one payment are recorded one at a time (the payment is locked).
        An amount given as the refunds so far (Alipay's cumulative `refund_fee`) is recorded as
        what this refund adds to them."""
        notice = refund.notice
        assert notice.refund_of is not None  # noqa: S101 - the caller routes refunds here.
        async with self._pool.connection() as conn, conn.transaction():
            rows = await fetch_dicts(conn, queries.LOCK_REFUNDED, (notice.refund_of,))
            if rows:
                paid = rows[0]
                amount = notice.amount_fen
                if notice.refund_total_fen is not None:
                    amount = max(0, notice.refund_total_fen - paid["refunded_fen"])
                notice = replace(
                    notice,
                    amount_fen=amount,
                    # The refund is the merchant's whose payment it refunds.
                    merchant_id=paid["merchant_id"] or notice.merchant_id,
                    kind=notice.kind if amount > 0 else None,
                )
            [recorded] = await _record(conn, [replace(refund, notice=notice)])
            if rows and recorded.is_new and notice.kind is not None:
                await execute(conn, queries.ADD_REFUNDED, {"fen": notice.amount_fen, "id": notice.refund_of})
        return replace(recorded, amount_fen=notice.amount_fen)

    async def mark_published(self, deliveries: Sequence[PendingDelivery], at: datetime) -> None:
        """Count one more attempt, published `at`, for each of `deliveries` (one statement)."""
        if not deliveries:
            return
        await execute(
            self._pool,
            queries.MARK_PUBLISHED,
            (at, [x.payment_id for x in deliveries], [x.device_id for x in deliveries]),
        )

    async def record_ack(self, ack: Ack, acked_at: datetime) -> bool:
        """Record one device ack; see `record_acks`."""
        (known,) = await self.record_acks([AckReceived(ack, acked_at)])
        return known

    async def record_acks(self, acks: Sequence[AckReceived]) -> list[bool]:
        """Record devices' acks, in one statement and one commit; for each, False if no such
        delivery exists (a stray or forged ack). Each (payment, device) at most once per call.

        The first answer sets the status, except that "played" always wins: a late played ack
        (flushed from a device's outbox) beats the "missed" concluded meanwhile. An ack that
        may conclude "not announced" queues that event in the same transaction."""

        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                queries.RECORD_ACKS,
                {"rows": ack_rows(acks)},
            )
            known = {(row[0], row[1]) for row in await cur.fetchall()}
            unheard: dict[str, list[str]] = {}
            for a in acks:
                if a.ack.status not in HEARD and (a.ack.payment_id, a.ack.device_id) in known:
                    unheard.setdefault(a.ack.status.value, []).append(a.ack.payment_id)
            for reason, payment_ids in unheard.items():
                await _flag_not_announced(conn, payment_ids, reason=reason)
        return [(a.ack.payment_id, a.ack.device_id) in known for a in acks]

    async def due_for_retry(self, *, now: datetime, ack_timeout: timedelta, limit: int = 500) -> list[PendingDelivery]:
        rows = await fetch_dicts(self._pool, queries.DUE_FOR_RETRY, (now, now - ack_timeout, limit))
        return [PendingDelivery(**row) for row in rows]

    async def mark_missed(self, *, now: datetime, grace: timedelta) -> int:
        """Pending deliveries whose TTL (plus time for a last ack) has passed become 'missed';
        a payment none of whose devices played it is flagged as not announced."""
        async with self._pool.connection() as conn, conn.transaction():
            rows = await fetch_rows(conn, queries.MARK_MISSED, (now - grace,))
            await _flag_not_announced(conn, sorted({row[0] for row in rows}), reason=queries.MISSED)
            return len(rows)

    async def summary(self, *, since: datetime | None = None, reach: Reach = WHOLE_FLEET) -> DeliverySummary:
        """The delivery figures of the payments received since `since` within `reach`
        (`Principal.reach()`: one merchant's, the merchants of some stores, or the fleet's),
        with those of the refunds apart."""
        payments = await self._summary(AnnounceKind.PAYMENT, since, reach)
        return payments.model_copy(update={"refunds": await self._summary(AnnounceKind.REFUND, since, reach)})

    async def recent_summary(self, *, hours: int, reach: Reach = WHOLE_FLEET) -> DeliverySummary:
        """`summary()` of the last `hours` hours. The whole fleet's, once it takes a second or
        more to compute, is reused for 10 s (one computation per interval however many ask)."""

        async def compute() -> DeliverySummary:
            return await self.summary(since=datetime.now(tz=UTC) - timedelta(hours=hours), reach=reach)

        if reach != WHOLE_FLEET:
            return await compute()
        shared = self._fleet_summaries.setdefault(hours, Recent(SUMMARY_REUSE_S, reuse_after_s=1.0))
        return await shared.get(compute)

    async def _summary(self, kind: AnnounceKind, since: datetime | None, reach: Reach) -> DeliverySummary:
        params = {"since": since, "kind": kind.value, **reach_params(reach)}
        async with self._pool.connection() as conn:
            [payments] = await fetch_dicts(conn, queries.PAYMENT_COUNTS, params)
            [row] = await fetch_dicts(conn, queries.DELIVERY_COUNTS, params)

        def percentiles(values: list[float] | None, top: float | None) -> Percentiles:
            if not values:
                return Percentiles(p50=None, p95=None, p99=None, max=top)
            return Percentiles(p50=values[0], p95=values[1], p99=values[2], max=top)

        deliveries = int(row["deliveries"])
        return DeliverySummary(
            payments=payments["payments"],
            unrouted_payments=payments["unrouted_payments"],
            deliveries=deliveries,
            delivered=row["delivered"],
            pending=row["pending"],
            missed=row["missed"],
            refused=row["refused"],
            failed=row["failed"],
            delivery_rate=(row["delivered"] / deliveries) if deliveries else None,
            latency_ms=percentiles(row["lat_p"], row["lat_max"]),
            ack_round_trip_ms=percentiles(row["rtt_p"], row["rtt_max"]),
        )

    async def payment(self, payment_id: str, *, reach: Reach = WHOLE_FLEET) -> PaymentView | None:
        """The payment and its deliveries, if it is within `reach` (its merchant's as recorded)."""
        async with self._pool.connection() as conn:
            rows = await fetch_dicts(conn, queries.PAYMENT, {"id": payment_id, **reach_params(reach)})
            if not rows:
                return None
            rows[0]["deliveries"] = await fetch_dicts(conn, queries.DELIVERIES, (payment_id,))
            rows[0]["refunds"] = await fetch_dicts(conn, queries.REFUNDS_OF, (payment_id,))
        return PaymentView.model_validate(rows[0])

    async def not_announced(
        self,
        *,
        merchant_id: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        reach: Reach = WHOLE_FLEET,
    ) -> list[NotAnnounced]:
        """Payments within `reach` that should have been announced and were heard on no device,
        newest first; `merchant_id` narrows to one merchant."""
        params = {"m": merchant_id, "since": since, "limit": limit, **reach_params(reach)}
        return await fetch_models(self._pool, NotAnnounced, queries.NOT_ANNOUNCED_PAYMENTS, params)


async def _record(conn: AsyncConnection[Any], payments: Sequence[NewPayment]) -> list[Recorded]:
    cur = await conn.execute(*record_statement(payments))
    taken = {row[0]: (list(row[1] or []), row[2]) for row in await cur.fetchall()}
    recorded = []
    for p in payments:
        devices, merchant = taken.get(p.notice.payment_id, ([], None))
        is_new = p.notice.payment_id in taken
        recorded.append(Recorded(p.notice.payment_id, is_new, devices, merchant, p.notice.amount_fen))
    return recorded


async def _flag_not_announced(conn: AsyncConnection[Any], payment_ids: list[str], *, reason: str) -> None:
    """Queue a `not_announced` event for each payment with no device left that played it or may
    still play it (in the caller's transaction)."""
    if not payment_ids:
        return
    await execute(conn, queries.FLAG_NOT_ANNOUNCED, {"ids": payment_ids, "reason": reason})
