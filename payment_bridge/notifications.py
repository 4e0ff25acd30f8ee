"""The aggregated-payment backend's own notification: signed JSON.

    POST /api/v1/notifications/backend
    X-Haodian-Sign-Type: RSA2
    X-Haodian-Signature: base64(SHA256withRSA(body))

    {"notify_id": "N20261121000001", "payment_id": "P20261121000001", "merchant_id": "M0001",
     "amount": "12.50", "channel": "wechat", "status": "SUCCESS",
     "paid_at": "2026-11-21T12:00:00+08:00"}

The signature is over the raw body bytes, checked before the body is parsed. Amounts are decimal
yuan strings, as every platform sends them, turned into integer fen here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints, ValidationError

from firmware_protocols.messages import MAX_AMOUNT_FEN, AnnounceKind, Channel, describe_errors
from payment_bridge import rsa2
from payment_bridge.errors import NotificationRejected

SIGNATURE_HEADER = "X-Haodian-Signature"
SIGN_TYPE_HEADER = "X-Haodian-Sign-Type"
MAX_BODY_BYTES = 64 * 1024

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
_IDENTIFIER = re.compile(r"^[\x21-\x7e]{1,64}$")


def check_provider(platform: str, field: str, given: str | None, ours: frozenset[str]) -> None:
    """Refuse a notification addressed to another service provider than us (`ours` empty: not
    checked). Alipay asks integrators to check `app_id`; WeChat Pay's `sp_mchid` is the same."""
    if ours and given not in ours:
        raise NotificationRejected(
            400, "NOT_OUR_PROVIDER", f"{platform} {field} {given!r} is not one of ours ({', '.join(sorted(ours))})"
        )


def our_merchant_id(value: str | None) -> str | None:
    """The merchant id our backend put in a platform's free field, if it holds one: a platform
    lets that field hold anything (WeChat's docs show `自定义数据`), and what is not an
    identifier of ours is not a merchant id, so routing falls back to the platform's id."""
    return value if value is not None and _IDENTIFIER.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class PaymentNotice:
    """A verified notification, whatever platform sent it: what the bridge records and announces.

    `payment_id` is the platform's trade id, prefixed with the platform, so that every
    notification about one trade (a platform's retries, Alipay's TRADE_FINISHED after
    TRADE_SUCCESS) lands on one payment. `kind` None: recorded, not announced.

    The merchant: `merchant_id` is ours as our backend named it (its own notification, or the
    field it puts in the order: WeChat Pay's `attach`, Alipay's `passback_params`), None when
    the platform did not carry it; `platform_merchant_id` is the merchant's id on the platform
    (WeChat Pay partner mode's `sub_mchid`, Alipay's `seller_id`). The store routes by ours when
    it names a merchant we know, else by the platform's (`merchants.wechat_sub_mchid`, ...)."""

    notify_id: str
    payment_id: str
    merchant_id: str | None
    amount_fen: int
    channel: Channel
    status: str
    kind: AnnounceKind | None
    paid_at: datetime
    raw: str  # JSON: what the platform sent, kept with the payment
    platform_merchant_id: str | None = None
    # A refund: its own record (`payment_id` names the refund) of the payment `refund_of`,
    # announced as 退款 with the amount refunded. `refund_total_fen`: the trade's refunds so far,
    # as Alipay sends them (cumulative); this refund's amount is what it adds.
    refund_of: str | None = None
    refund_total_fen: int | None = None


def refund_payment_id(prefix: str, key: str) -> str:
    """The id of a refund's own record: `<prefix>:<key>`, or its digest when that would not fit
    a payment id (64 printable characters; Alipay's refund request numbers may be 64 long)."""
    candidate = f"{prefix}:{key}"
    if len(candidate) <= 64 and _IDENTIFIER.fullmatch(candidate):
        return candidate
    return f"{prefix}:{hashlib.sha256(key.encode()).hexdigest()[:40]}"


def parse_yuan(amount: str) -> int:
    """A decimal yuan string as the platforms send it ("12.50") in integer fen."""
    return int(Decimal(amount) * 100)


AMOUNT_PATTERN = r"^\d{1,10}(\.\d{1,2})?$"


class BackendNotification(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    notify_id: Identifier
    payment_id: Identifier
    merchant_id: Identifier
    amount: Annotated[str, StringConstraints(pattern=AMOUNT_PATTERN)]
    channel: Channel
    # SUCCESS and REFUND are announced; CLOSED (and any later status) is recorded only. A
    # REFUND names the payment refunded in `payment_id`, the amount refunded in `amount`, and
    # its own id in `refund_id` (without one, the notification's id stands for it).
    status: Literal["SUCCESS", "REFUND", "CLOSED"]
    paid_at: AwareDatetime
    refund_id: Identifier | None = None

    @property
    def amount_fen(self) -> int:
        return parse_yuan(self.amount)

    @property
    def kind(self) -> AnnounceKind | None:
        """What to announce, or None when this status is not announced."""
        return {"SUCCESS": AnnounceKind.PAYMENT, "REFUND": AnnounceKind.REFUND}.get(self.status)

    def notice(self) -> PaymentNotice:
        refund = self.status == "REFUND"
        return PaymentNotice(
            notify_id=self.notify_id,
            payment_id=refund_payment_id("refund", self.refund_id or self.notify_id) if refund else self.payment_id,
            refund_of=self.payment_id if refund else None,
            merchant_id=self.merchant_id,
            amount_fen=self.amount_fen,
            channel=self.channel,
            status=self.status,
            kind=self.kind,
            paid_at=self.paid_at,
            raw=self.model_dump_json(),
        )


def verify_backend_notification(
    body: bytes, signature: str | None, sign_type: str | None, public_key: RSAPublicKey
) -> PaymentNotice:
    """Check size, signature, then shape; raise `NotificationRejected` for the first problem."""
    if len(body) > MAX_BODY_BYTES:
        raise NotificationRejected(413, "BODY_TOO_LARGE", f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if sign_type not in (None, "RSA2"):
        raise NotificationRejected(400, "SIGN_TYPE_UNSUPPORTED", f"sign type {sign_type!r} is not RSA2")
    if not signature:
        raise NotificationRejected(401, "SIGNATURE_MISSING", f"no {SIGNATURE_HEADER} header")
    if not rsa2.verify(public_key, body, signature):
        raise NotificationRejected(401, "SIGNATURE_INVALID", "RSA2 signature does not verify against the backend key")
    try:
        notification = BackendNotification.model_validate_json(body)
    except ValidationError as exc:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", describe_errors(exc.errors())) from exc
    if notification.amount_fen > MAX_AMOUNT_FEN:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"amount {notification.amount} is out of range")
    return notification.notice()
