"""Payments as the platforms send them, through the real processes (the bridge and fleet
servers, Mosquitto, two agents each on its own process): a WeChat Pay partner-mode payment by
the merchant's sub_mchid, its partial and full refunds, a payment for a sub_mchid no merchant of
ours holds, and a payment that reaches us long after it was paid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from edge_agent.hardware.audio import PLAYED_LOG
from firmware_protocols.messages import Channel
from tests.faults.rig import MERCHANT, Rig, Sent
from tests.integration.resilience_kit import plays

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SUB_MCHID = "1900000109"
WX = "/api/v1/notifications/wechatpay"


async def test_partner_mode_refunds_unknown_merchants_and_stale_payments_through_real_processes(rig: Rig) -> None:
    """Proves: partner mode routed by sub_mchid plays once on each speaker; a partial and a full
    refund each play once as 退款 (the rig's check: recorded, once per speaker, in the refunds'
    own figures); an unknown sub_mchid is answered at the first try and listed UNKNOWN_MERCHANT;
    a stale payment is answered, listed STALE and played by no one."""
    async with await psycopg.AsyncConnection.connect(rig.pg.url) as conn:
        await conn.execute("UPDATE merchants SET wechat_sub_mchid = %s WHERE merchant_id = %s", (SUB_MCHID, MERCHANT))
        await conn.commit()
    trade = "4200000000202612010000000001"
    async with rig.bridge() as bridge:
        paid = Sent(f"wechat:{trade}")
        rig.sent.append(paid)
        body, headers = rig.wechat.notification(
            transaction_id=trade, merchant_id=None, amount_fen=10000, sub_mchid=SUB_MCHID
        )
        await rig.deliver(bridge, paid, body, headers, WX)
        for n, fen in ((1, 3000), (2, 7000)):
            refund_id = f"50300000012026120100000000{n}"
            refund = Sent(f"wechat-refund:{refund_id}", refund=True)
            rig.sent.append(refund)
            body, headers = rig.wechat.refund(
                transaction_id=trade, refund_id=refund_id, total_fen=10000, refund_fen=fen, sub_mchid=SUB_MCHID
            )
            await rig.deliver(bridge, refund, body, headers, WX)
        unknown = Sent("wechat:4200000000202612010000000002")
        body, headers = rig.wechat.notification(
            transaction_id="4200000000202612010000000002", merchant_id=None, amount_fen=800, sub_mchid="1999999999"
        )
        await rig.deliver(bridge, unknown, body, headers, WX)
        assert rig.backend is not None
        late = datetime.now(tz=UTC) - timedelta(minutes=10)
        body, headers = rig.backend.notification(amount_fen=4200, channel=Channel.ALIPAY, paid_at=late)
        stale = Sent(rig.backend_payment_id(body))
        await rig.deliver(bridge, stale, body, headers, "/api/v1/notifications/backend")
        counts = await rig.check()
        listed = {e["payment_id"]: e["code"] for e in (await bridge.get("/api/v1/payments/not-announced")).json()}
        payment = (await bridge.get(f"/api/v1/payments/wechat:{trade}")).json()
    assert (counts["payments"], counts["refunds"]) == (1, 2)
    assert (unknown.attempts, stale.attempts) == (1, 1)  # answered at once: the platform stops retrying
    assert (listed[unknown.payment_id], listed[stale.payment_id]) == ("UNKNOWN_MERCHANT", "STALE")
    assert (payment["status"], payment["refunded_fen"]) == ("REFUNDED", 10000)
    for device in ("FLT-A", "FLT-B"):
        assert plays(rig.audio(device))[stale.payment_id] == 0
        # What the speaker said, from its own play log: the payment, then each refund's amount.
        said = [
            line.split(" ", 2)[2] for line in (rig.audio(device) / PLAYED_LOG).read_text(encoding="utf-8").splitlines()
        ]
        assert [text for text in said if text != "设备绑定成功"] == ["微信收款一百元", "退款三十元", "退款七十元"]
