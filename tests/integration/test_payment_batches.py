"""The bridge's group commit on a real PostgreSQL: many payments and acks in one statement each,
with the same answers one at a time would give."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from firmware_protocols.messages import Ack, AckStatus, AnnounceKind, Channel
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from payment_bridge.notifications import PaymentNotice
from payment_bridge.store import AckReceived, NewPayment, PaymentStore

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def _notice(payment_id: str, merchant_id: str, *, announce: bool = True, amount_fen: int = 1250) -> PaymentNotice:
    return PaymentNotice(
        payment_id=payment_id,
        notify_id=f"N-{payment_id}",
        merchant_id=merchant_id,
        amount_fen=amount_fen,
        channel=Channel.WECHAT,
        kind=AnnounceKind.PAYMENT if announce else None,
        status="SUCCESS" if announce else "WAIT_BUYER_PAY",
        paid_at=datetime.now(tz=UTC),
        raw=json.dumps({"payment_id": payment_id}),
    )


async def test_a_batch_records_each_payment_as_alone_would(machine_database) -> None:
    now = datetime.now(tz=UTC)
    ttl = timedelta(minutes=2)
    async with open_pool(machine_database, max_size=2) as pool:
        await migrate(pool)
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO bindings (device_id, merchant_id) VALUES ('DA1', 'MA'), ('DA2', 'MA'), ('DB1', 'MB')"
            )
        store = PaymentStore(pool)
        # Already there before the batch: a repeat, and an Alipay trade waiting for the buyer.
        await store.record_payment(_notice("P-old", "MA"), source="backend", received_at=now, ttl=ttl)
        await store.record_payment(_notice("P-wait", "MB", announce=False), source="alipay", received_at=now, ttl=ttl)
        batch = [
            NewPayment(_notice("P-1", "MA"), "backend", now, now + ttl),  # two devices
            NewPayment(_notice("P-old", "MA"), "backend", now, now + ttl),  # a repeat
            NewPayment(_notice("P-wait", "MB"), "alipay", now, now + ttl),  # the trade now paid
            NewPayment(_notice("P-2", "M-nobody"), "backend", now, now + ttl),  # no bound device
            NewPayment(_notice("P-3", "MB", amount_fen=5), "backend", now, now + ttl),
        ]
        recorded = await store.record_payments(batch)
        assert [(r.payment_id, r.is_new, r.device_ids) for r in recorded] == [
            ("P-1", True, ["DA1", "DA2"]),
            ("P-old", False, []),
            ("P-wait", True, ["DB1"]),
            ("P-2", True, []),
            ("P-3", True, ["DB1"]),
        ]
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT payment_id, reason FROM payment_events WHERE event = 'not_announced'")
            assert await cur.fetchall() == [("P-2", "no_bound_device")]
            cur = await conn.execute("SELECT amount_fen FROM payments WHERE payment_id = 'P-3'")
            assert await cur.fetchone() == (5,)

        def ack(payment_id: str, device_id: str, status: AckStatus) -> AckReceived:
            ms = int(now.timestamp() * 1000)
            played = ms if status is AckStatus.PLAYED else None
            message = Ack(
                device_id=device_id,
                ts=ms,
                payment_id=payment_id,
                status=status,
                received_at=ms,
                play_started_at=played,
                reason=None if status is AckStatus.PLAYED else "speaker fault",
            )
            return AckReceived(message, now)

        known = await store.record_acks(
            [
                ack("P-1", "DA1", AckStatus.PLAYED),
                ack("P-1", "DA2", AckStatus.FAILED),
                ack("P-3", "DB1", AckStatus.FAILED),  # its only device: not announced
                ack("P-404", "DA1", AckStatus.PLAYED),  # no such delivery: a stray
            ]
        )
        assert known == [True, True, True, False]
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT payment_id, device_id, status, acks FROM deliveries ORDER BY payment_id, device_id"
            )
            rows = await cur.fetchall()
            cur = await conn.execute(
                "SELECT payment_id, reason FROM payment_events WHERE event = 'not_announced' ORDER BY payment_id"
            )
            events = await cur.fetchall()
        assert ("P-1", "DA1", "played", 1) in rows
        assert ("P-1", "DA2", "failed", 1) in rows
        assert ("P-3", "DB1", "failed", 1) in rows
        # P-1 was heard on one device, so only P-3 joins P-2 as not announced.
        assert events == [("P-2", "no_bound_device"), ("P-3", "failed")]
