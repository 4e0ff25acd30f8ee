"""What the bridge keeps in PostgreSQL: payments, per-device deliveries, rejected notifications.

A payment is written, with a delivery row for each device bound to its merchant, in one
transaction before the platform hears "success": nothing acknowledged is ever lost, and a retry
of the same notification finds the payment already there and announces nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols.messages import HEARD, Ack
from payment_bridge.notifications import PaymentNotice

# Statuses that mean the merchant heard it (a duplicate ack: the device played it before).


@dataclass(frozen=True, slots=True)
class Recorded:
    payment_id: str
    is_new: bool
    device_ids: list[str]


@dataclass(frozen=True, slots=True)
class NewPayment:
    """A verified notification on its way to the database."""

    notice: PaymentNotice
    source: str
    received_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AckReceived:
    ack: Ack
    acked_at: datetime


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


class DeliveryView(BaseModel):
    device_id: str
    status: str
    attempts: int
    acked_at: datetime | None
    play_started_at: datetime | None
    text: str | None
    reason: str | None


class PaymentView(BaseModel):
    payment_id: str
    merchant_id: str
    amount_fen: int
    channel: str
    kind: str
    status: str
    paid_at: datetime
    received_at: datetime
    deliveries: list[DeliveryView]


class NotAnnounced(BaseModel):
    payment_id: str
    merchant_id: str
    amount_fen: int
    channel: str
    paid_at: datetime
    received_at: datetime
    reason: str
    concluded_at: datetime
    # When the backend acknowledged the webhook; None while it is still being told.
    backend_told_at: datetime | None


class Binding(BaseModel):
    device_id: str
    merchant_id: str
    bound_at: datetime


class PaymentStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record_rejected(
        self, *, source: str, code: str, reason: str, body: bytes, headers: Mapping[str, str], received_at: datetime
    ) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO rejected_notifications (received_at, source, code, reason, body, headers)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    received_at,
                    source,
                    code,
                    reason[:1000],
                    body[:65536].decode("utf-8", "replace"),
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
            cur = await conn.execute(
                _RECORD_PAYMENTS,
                {
                    "payment_id": [p.notice.payment_id for p in payments],
                    "source": [p.source for p in payments],
                    "notify_id": [p.notice.notify_id for p in payments],
                    "merchant_id": [p.notice.merchant_id for p in payments],
                    "amount_fen": [p.notice.amount_fen for p in payments],
                    "channel": [p.notice.channel.value for p in payments],
                    "kind": [p.notice.kind.value if p.notice.kind else "none" for p in payments],
                    "status": [p.notice.status for p in payments],
                    "paid_at": [p.notice.paid_at for p in payments],
                    "received_at": [p.received_at for p in payments],
                    "raw": [p.notice.raw for p in payments],
                    "expires_at": [p.expires_at for p in payments],
                },
            )
            taken = {row[0]: list(row[1] or []) for row in await cur.fetchall()}
        return [
            Recorded(
                p.notice.payment_id, is_new=p.notice.payment_id in taken, device_ids=taken.get(p.notice.payment_id, [])
            )
            for p in payments
        ]

    async def mark_published(self, deliveries: Sequence[PendingDelivery], at: datetime) -> None:
        """Count one more attempt, published `at`, for each of `deliveries` (one statement)."""
        if not deliveries:
            return
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE deliveries d SET attempts = d.attempts + 1, last_published_at = %s"
                " FROM unnest(%s::text[], %s::text[]) AS r (payment_id, device_id)"
                " WHERE d.payment_id = r.payment_id AND d.device_id = r.device_id",
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

        def started(ack: Ack, at: datetime) -> datetime | None:
            return datetime.fromtimestamp(ack.play_started_at / 1000, tz=at.tzinfo) if ack.play_started_at else None

        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                _RECORD_ACKS,
                {
                    "payment_id": [a.ack.payment_id for a in acks],
                    "device_id": [a.ack.device_id for a in acks],
                    "status": [a.ack.status.value for a in acks],
                    "acked_at": [a.acked_at for a in acks],
                    "play_started": [started(a.ack, a.acked_at) for a in acks],
                    "text": [a.ack.text for a in acks],
                    "reason": [a.ack.reason for a in acks],
                },
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
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT d.payment_id, d.device_id, p.merchant_id, p.amount_fen, p.channel, p.kind, p.paid_at,"
                " p.received_at, d.expires_at FROM deliveries d JOIN payments p USING (payment_id)"
                " WHERE d.status = 'pending' AND d.expires_at > %s"
                " AND d.last_published_at < %s"
                " ORDER BY d.last_published_at LIMIT %s",
                (now, now - ack_timeout, limit),
            )
            return [PendingDelivery(**row) for row in await cur.fetchall()]

    async def mark_missed(self, *, now: datetime, grace: timedelta) -> int:
        """Pending deliveries whose TTL (plus time for a last ack) has passed become 'missed';
        a payment none of whose devices played it is flagged as not announced."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE deliveries SET status = 'missed' WHERE status = 'pending' AND expires_at < %s"
                " RETURNING payment_id",
                (now - grace,),
            )
            missed = cur.rowcount
            await _flag_not_announced(conn, sorted({row[0] for row in await cur.fetchall()}), reason="missed")
            return missed

    async def summary(self, *, since: datetime | None = None) -> DeliverySummary:
        since_clause = "p.received_at >= %(since)s" if since else "TRUE"
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT count(*) AS payments,"  # noqa: S608 - the clause is one of two constants.
                " count(*) FILTER (WHERE p.kind <> 'none' AND NOT EXISTS"
                "   (SELECT 1 FROM deliveries d WHERE d.payment_id = p.payment_id)) AS unrouted_payments"
                f" FROM payments p WHERE {since_clause}",
                {"since": since},
            )
            payments = await cur.fetchone()
            await cur.execute(
                "SELECT count(*) AS deliveries,"  # noqa: S608 - the clause is one of two constants.
                " count(*) FILTER (WHERE d.status = ANY(%(delivered)s)) AS delivered,"
                " count(*) FILTER (WHERE d.status = 'pending') AS pending,"
                " count(*) FILTER (WHERE d.status = 'missed') AS missed,"
                " count(*) FILTER (WHERE d.status = 'refused') AS refused,"
                " count(*) FILTER (WHERE d.status = 'failed') AS failed,"
                " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lat) AS lat_p,"
                " max(lat) AS lat_max,"
                " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY rtt) AS rtt_p,"
                " max(rtt) AS rtt_max"
                " FROM (SELECT d.status,"
                "   CASE WHEN d.status = 'played' THEN"
                "     extract(epoch FROM d.play_started_at - p.received_at) * 1000 END AS lat,"
                "   CASE WHEN d.status = 'played' THEN"
                "     extract(epoch FROM d.acked_at - p.received_at) * 1000 END AS rtt"
                f"   FROM deliveries d JOIN payments p USING (payment_id) WHERE {since_clause}) d",
                {"since": since, "delivered": sorted(HEARD)},
            )
            row = await cur.fetchone()
        assert payments is not None  # noqa: S101 - aggregates always return a row.
        assert row is not None  # noqa: S101

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

    async def payment(self, payment_id: str) -> PaymentView | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT payment_id, merchant_id, amount_fen, channel, kind, status, paid_at, received_at"
                " FROM payments WHERE payment_id = %s",
                (payment_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(
                "SELECT device_id, status, attempts, acked_at, play_started_at, text, reason"
                " FROM deliveries WHERE payment_id = %s ORDER BY device_id",
                (payment_id,),
            )
            row["deliveries"] = await cur.fetchall()
            return PaymentView.model_validate(row)

    async def bind(self, device_id: str, merchant_id: str) -> Binding:
        """Bind a device to a merchant, moving it from any previous one (one merchant per device)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO bindings (device_id, merchant_id) VALUES (%s, %s)"
                " ON CONFLICT (device_id) DO UPDATE SET merchant_id = EXCLUDED.merchant_id, bound_at = now()"
                " RETURNING device_id, merchant_id, bound_at",
                (device_id, merchant_id),
            )
            row = await cur.fetchone()
            return Binding.model_validate(row)

    async def unbind(self, device_id: str) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute("DELETE FROM bindings WHERE device_id = %s", (device_id,))
            return cur.rowcount == 1

    async def bindings(
        self, *, merchant_id: str | None = None, device_id: str | None = None, serial: str | None = None
    ) -> list[Binding]:
        """Bindings by merchant, device id or the serial number printed on the device (the one in
        the registry, or the one the device reported)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT device_id, merchant_id, bound_at FROM bindings"
                " WHERE (%(m)s::text IS NULL OR merchant_id = %(m)s) AND (%(d)s::text IS NULL OR device_id = %(d)s)"
                " AND (%(s)s::text IS NULL OR device_id IN"
                "   (SELECT device_id FROM devices WHERE serial = %(s)s OR reported_serial = %(s)s))"
                " ORDER BY merchant_id, device_id",
                {"m": merchant_id, "d": device_id, "s": serial},
            )
            return [Binding.model_validate(row) for row in await cur.fetchall()]

    async def not_announced(
        self, *, merchant_id: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[NotAnnounced]:
        """Payments that should have been announced and were heard on no device, newest first."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT p.payment_id, p.merchant_id, p.amount_fen, p.channel, p.paid_at, p.received_at, e.reason,"
                " e.created_at AS concluded_at, e.delivered_at AS backend_told_at"
                " FROM payment_events e JOIN payments p USING (payment_id)"
                " WHERE e.event = 'not_announced' AND (%(m)s::text IS NULL OR p.merchant_id = %(m)s)"
                " AND (%(since)s::timestamptz IS NULL OR p.received_at >= %(since)s)"
                " ORDER BY p.received_at DESC LIMIT %(limit)s",
                {"m": merchant_id, "since": since, "limit": limit},
            )
            return [NotAnnounced.model_validate(row) for row in await cur.fetchall()]


# New payments (or ones taken again, see record_payments), their deliveries to the devices bound
# to their merchants if they announce, and the not-announced event for any that announces to
# nobody, in one statement. The first publish follows at once: attempts starts at 1 and
# last_published_at at the time of receipt, so the retry loop leaves the delivery alone until the
# ack timeout has passed. Answers one row per payment taken: (payment_id, its device ids).
_RECORD_PAYMENTS = """
WITH n AS (
    SELECT * FROM unnest(%(payment_id)s::text[], %(source)s::text[], %(notify_id)s::text[],
                         %(merchant_id)s::text[], %(amount_fen)s::bigint[], %(channel)s::text[], %(kind)s::text[],
                         %(status)s::text[], %(paid_at)s::timestamptz[], %(received_at)s::timestamptz[],
                         %(raw)s::text[], %(expires_at)s::timestamptz[])
        AS n (payment_id, source, notify_id, merchant_id, amount_fen, channel, kind, status, paid_at, received_at,
              raw, expires_at)
),
p AS (
    INSERT INTO payments (payment_id, source, notify_id, merchant_id, amount_fen, channel, kind, status, paid_at,
                          received_at, raw)
    SELECT payment_id, source, notify_id, merchant_id, amount_fen, channel, kind, status, paid_at, received_at,
           raw::jsonb
    FROM n
    ON CONFLICT (payment_id) DO UPDATE SET notify_id = EXCLUDED.notify_id, kind = EXCLUDED.kind,
        status = EXCLUDED.status, amount_fen = EXCLUDED.amount_fen, paid_at = EXCLUDED.paid_at,
        received_at = EXCLUDED.received_at, raw = EXCLUDED.raw
    WHERE payments.kind = 'none' AND EXCLUDED.kind <> 'none'
    RETURNING payment_id, kind
),
d AS (
    INSERT INTO deliveries (payment_id, device_id, expires_at, last_published_at, attempts)
    SELECT p.payment_id, b.device_id, n.expires_at, n.received_at, 1
    FROM p JOIN n USING (payment_id) JOIN bindings b ON b.merchant_id = n.merchant_id
    WHERE p.kind <> 'none'
    ORDER BY p.payment_id, b.device_id
    RETURNING payment_id, device_id
),
e AS (
    INSERT INTO payment_events (payment_id, event, reason)
    SELECT p.payment_id, 'not_announced', 'no_bound_device' FROM p
    WHERE p.kind <> 'none' AND NOT EXISTS (SELECT 1 FROM d WHERE d.payment_id = p.payment_id)
    ON CONFLICT (payment_id, event) DO NOTHING
)
SELECT p.payment_id, (SELECT array_agg(d.device_id ORDER BY d.device_id) FROM d WHERE d.payment_id = p.payment_id)
FROM p
"""

# Devices' acks onto their deliveries; answers (payment_id, device_id) of each delivery found.
# An ack takes the delivery when it is still open, or when it says played and nothing did before.
_RECORD_ACKS = """
UPDATE deliveries d SET acks = d.acks + 1,
    status = CASE WHEN d.status IN ('pending', 'missed') OR (a.status = 'played' AND d.status <> 'played')
             THEN a.status ELSE d.status END,
    acked_at = CASE WHEN d.status IN ('pending', 'missed') OR (a.status = 'played' AND d.status <> 'played')
               THEN a.acked_at ELSE d.acked_at END,
    play_started_at = COALESCE(d.play_started_at, a.play_started),
    text = COALESCE(d.text, a.text), reason = COALESCE(d.reason, a.reason)
FROM unnest(%(payment_id)s::text[], %(device_id)s::text[], %(status)s::text[], %(acked_at)s::timestamptz[],
            %(play_started)s::timestamptz[], %(text)s::text[], %(reason)s::text[])
    AS a (payment_id, device_id, status, acked_at, play_started, text, reason)
WHERE d.payment_id = a.payment_id AND d.device_id = a.device_id
RETURNING d.payment_id, d.device_id
"""


async def _flag_not_announced(conn: AsyncConnection[Any], payment_ids: list[str], *, reason: str) -> None:
    """Queue a `not_announced` event for each payment with no device left that played it or may
    still play it (in the caller's transaction)."""
    if not payment_ids:
        return
    await conn.execute(
        "INSERT INTO payment_events (payment_id, event, reason)"
        " SELECT p.payment_id, 'not_announced', %(reason)s FROM payments p"
        " WHERE p.payment_id = ANY(%(ids)s) AND p.kind <> 'none' AND NOT EXISTS ("
        "   SELECT 1 FROM deliveries d WHERE d.payment_id = p.payment_id"
        "   AND (d.status = 'pending' OR d.status = ANY(%(delivered)s)))"
        " ON CONFLICT (payment_id, event) DO NOTHING",
        {"ids": payment_ids, "reason": reason, "delivered": sorted(HEARD)},
    )
