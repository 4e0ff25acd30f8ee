"""A batch's rows as the bridge's statements take them: one JSON array of objects, one text
parameter (`queries.RECORD_PAYMENTS`, `queries.RECORD_ACKS`). Fifteen arrays adapted one value
at a time were ~9 % of the bridge's CPU (py-spy, issue 27); this is one C-encoded string."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, LiteralString

from payment_bridge import queries

if TYPE_CHECKING:
    from payment_bridge.store import AckReceived, NewPayment

# UTF-8 as it is: every value is text the doors and the device models have checked.
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def record_statement(payments: Sequence[NewPayment]) -> tuple[LiteralString, dict[str, str]]:
    """The one statement that records `payments`, with its parameters (also what `bench record`
    times). Our backend names our merchant; a platform's notification is routed (queries._ROUTE)."""
    trusted = all(p.source == "backend" for p in payments)
    rows = [
        {
            "payment_id": p.notice.payment_id,
            "source": p.source,
            "notify_id": p.notice.notify_id,
            "given": p.notice.merchant_id,
            "platform_merchant_id": p.notice.platform_merchant_id,
            "amount_fen": p.notice.amount_fen,
            "channel": p.notice.channel.value,
            "kind": p.notice.kind.value if p.notice.kind and not p.held else queries.UNANNOUNCED,
            "status": p.notice.status,
            "paid_at": p.notice.paid_at.isoformat(),
            "received_at": p.received_at.isoformat(),
            "raw": p.notice.raw,
            "expires_at": p.expires_at.isoformat(),
            "refund_of": p.notice.refund_of,
            "held": p.held,
        }
        for p in payments
    ]
    return queries.RECORD_PAYMENTS if trusted else queries.RECORD_ROUTED_PAYMENTS, {"rows": _json(rows)}


def _ack_row(a: AckReceived) -> dict[str, Any]:
    def at(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=a.acked_at.tzinfo).isoformat()

    ack = a.ack
    return {
        "payment_id": ack.payment_id,
        "device_id": ack.device_id,
        "status": ack.status.value,
        "acked_at": a.acked_at.isoformat(),
        "play_started": at(ack.play_started_at) if ack.play_started_at else None,
        "text": ack.text,
        "reason": ack.reason,
        "signed": a.signed,
        "sent": at(ack.ts),
    }


def ack_rows(acks: Sequence[AckReceived]) -> str:
    """`acks` as RECORD_ACKS takes them."""
    return _json([_ack_row(a) for a in acks])
