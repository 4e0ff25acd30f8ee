"""The ESC/POS receipt a POS terminal prints for an announced payment or refund."""

from __future__ import annotations

import time

from edge_agent.speech import read_amount
from firmware_protocols.messages import Announce
from firmware_protocols.serial import escpos


def receipt_for(announce: Announce, spoken: str) -> escpos.Receipt:
    """The ESC/POS receipt a POS prints for an announced payment."""
    yuan, fen = divmod(announce.amount_fen, 100)
    paid = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(announce.paid_at / 1000))
    title = "退款凭证" if announce.kind == "refund" else "收款凭证"
    return (
        escpos.Receipt()
        .init()
        .chinese()
        .align(escpos.Align.CENTER)
        .bold()
        .size(2, 2)
        .line(f"好店 {title}")
        .size(1, 1)
        .bold(on=False)
        .align(escpos.Align.LEFT)
        .line(spoken.removesuffix(read_amount(announce.amount_fen)))
        .line(f"金额: {yuan}.{fen:02d} 元")
        .line(f"时间: {paid}")
        .chinese(on=False)
        .line(f"No. {announce.payment_id}")
        .feed(3)
        .cut(partial=True)
    )
