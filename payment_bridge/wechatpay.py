"""WeChat Pay API v3 payment notification (支付结果通知), verified as WeChat Pay specifies.

    POST /api/v1/notifications/wechatpay
    Wechatpay-Timestamp: 1763700000
    Wechatpay-Nonce: 5K8264ILTKCH16CQ2502SI8ZNMTM67VS
    Wechatpay-Serial: 5157F09EFDC096DE15EBE81A47057A7232F1B8E1   (or PUB_KEY_ID_0112...)
    Wechatpay-Signature: base64(SHA256withRSA("{timestamp}\\n{nonce}\\n{body}\\n"))
    Wechatpay-Signature-Type: WECHATPAY2-SHA256-RSA2048

    {"id": "EV-...", "event_type": "TRANSACTION.SUCCESS", "resource_type": "encrypt-resource",
     "resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext": "...", "nonce": "...",
                  "associated_data": "transaction"}}

The signature is checked against the platform key that `Wechatpay-Serial` names (a platform
certificate's serial, or a platform public key id), over the raw body. A timestamp more than 5
minutes from our clock is refused (a replayed notification), which the WeChat Pay SDKs do not
check. `resource` is decrypted with the APIv3 key; the transaction inside names the payment
(`transaction_id`), its state (only `SUCCESS` is announced) and the amount in fen.

Two modes. Partner (服务商) mode, how an aggregator is paid: `sp_mchid` is us, the service
provider, and `sub_mchid` the merchant. Direct mode: `mchid` is us. Either is checked against
our configured merchant ids. The merchant is the one our backend put in `attach` when it created
the order, when `attach` holds a merchant id of ours (it is optional, and free text: WeChat's
docs show `自定义数据`); else, in partner mode, the merchant whose `sub_mchid` it is. A refund
(`REFUND.SUCCESS`, `.ABNORMAL`, `.CLOSED`; the resource's `original_type` is `refund`) is its
own record (`wechat-refund:<refund_id>`) of the payment `wechat:<transaction_id>`, announced as
退款 when it succeeded. WeChat Pay
expects 200 or 204 once the notification is recorded, and a 4xx/5xx with a JSON
`{"code", "message"}` otherwise.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from firmware_protocols.messages import MAX_AMOUNT_FEN, AnnounceKind, Channel, describe_errors
from payment_bridge import rsa2
from payment_bridge.errors import NotificationRejected
from payment_bridge.notifications import (
    MAX_BODY_BYTES,
    PaymentNotice,
    check_provider,
    our_merchant_id,
    refund_payment_id,
)

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
# WeChat Pay's own guidance: refuse a notification whose timestamp is this far from our clock.
REPLAY_WINDOW_S = 300
_DIGITS = re.compile(r"^\d{1,12}$")

_M = TypeVar("_M", bound=BaseModel)
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


class _Amount(BaseModel):
    model_config = ConfigDict(extra="allow")
    total: Annotated[int, Field(ge=0, le=MAX_AMOUNT_FEN)]
    currency: str = "CNY"


class _Parties(BaseModel):
    """Who a decrypted resource is between: direct mode (`mchid`, us) or partner mode
    (`sp_mchid`, us, and `sub_mchid`, the merchant)."""

    model_config = ConfigDict(extra="allow")
    mchid: Identifier | None = None
    sp_mchid: Identifier | None = None
    sub_mchid: Identifier | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        partner = self.sp_mchid is not None or self.sub_mchid is not None
        if partner and (self.sp_mchid is None or self.sub_mchid is None):
            raise ValueError("partner mode names both sp_mchid and sub_mchid")
        if partner == (self.mchid is not None):
            raise ValueError("a resource names mchid (direct mode) or sp_mchid and sub_mchid (partner mode)")
        return self

    def check_provider(self, ours: frozenset[str]) -> None:
        """Refuse it unless it is for us (our merchant id on WeChat Pay)."""
        provider = self.sp_mchid or self.mchid
        check_provider("WeChat Pay", "sp_mchid" if self.sp_mchid else "mchid", provider, ours)


class Transaction(_Parties):
    """The decrypted `resource` of a payment notification (the fields we use; others kept)."""

    transaction_id: Identifier
    out_trade_no: str
    trade_state: str
    attach: Annotated[str, StringConstraints(max_length=128)] | None = None
    success_time: AwareDatetime | None = None
    amount: _Amount


class _RefundAmount(BaseModel):
    model_config = ConfigDict(extra="allow")
    total: Annotated[int, Field(ge=0, le=MAX_AMOUNT_FEN)]
    refund: Annotated[int, Field(ge=0, le=MAX_AMOUNT_FEN)]


class Refund(_Parties):
    """The decrypted `resource` of a refund notification (REFUND.SUCCESS, .ABNORMAL, .CLOSED)."""

    transaction_id: Identifier
    out_trade_no: str
    refund_id: Identifier
    out_refund_no: str
    refund_status: str
    success_time: AwareDatetime | None = None
    amount: _RefundAmount


class _Resource(BaseModel):
    model_config = ConfigDict(extra="allow")
    algorithm: str
    ciphertext: Annotated[str, StringConstraints(min_length=1)]
    nonce: Annotated[str, StringConstraints(min_length=1)]
    associated_data: str = ""


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Identifier
    event_type: str
    resource_type: Literal["encrypt-resource"]
    resource: _Resource


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"


def decrypt_resource(apiv3_key: bytes, nonce: str, ciphertext_b64: str, associated_data: str) -> bytes:
    """AEAD_AES_256_GCM as WeChat Pay uses it: the tag is the last 16 bytes of the ciphertext."""
    try:
        ciphertext = base64.b64decode(ciphertext_b64, validate=True)
        return AESGCM(apiv3_key).decrypt(nonce.encode(), ciphertext, associated_data.encode())
    except (binascii.Error, ValueError, InvalidTag) as exc:
        raise NotificationRejected(400, "DECRYPT_FAILED", "resource does not decrypt with the APIv3 key") from exc


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name.lower(), "")
    if not value:
        raise NotificationRejected(401, "SIGNATURE_MISSING", f"no {name} header")
    return value


def verify_wechatpay_notification(
    body: bytes,
    headers: Mapping[str, str],
    *,
    platform_key: Callable[[str], RSAPublicKey | None],
    apiv3_key: bytes | None,
    now: datetime,
    ours: frozenset[str] = frozenset(),
) -> PaymentNotice:
    """Check size, headers, signature, replay window, then decrypt; `headers` with lower-case names."""
    if len(body) > MAX_BODY_BYTES:
        raise NotificationRejected(413, "BODY_TOO_LARGE", f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if apiv3_key is None:
        raise NotificationRejected(503, "KEY_NOT_CONFIGURED", "no WeChat Pay APIv3 key is configured")
    signature_type = _header(headers, "Wechatpay-Signature-Type")
    if signature_type != SIGNATURE_TYPE:
        raise NotificationRejected(400, "SIGN_TYPE_UNSUPPORTED", f"signature type {signature_type!r}")
    timestamp, nonce = _header(headers, "Wechatpay-Timestamp"), _header(headers, "Wechatpay-Nonce")
    serial, signature = _header(headers, "Wechatpay-Serial"), _header(headers, "Wechatpay-Signature")
    key = platform_key(serial)
    if key is None:
        raise NotificationRejected(401, "SERIAL_UNKNOWN", f"no platform key for Wechatpay-Serial {serial!r}")
    if not rsa2.verify(key, signed_message(timestamp, nonce, body), signature):
        raise NotificationRejected(401, "SIGNATURE_INVALID", "signature does not verify against the platform key")
    if not _DIGITS.match(timestamp) or abs(now.timestamp() - int(timestamp)) > REPLAY_WINDOW_S:
        raise NotificationRejected(
            401, "TIMESTAMP_OUT_OF_WINDOW", f"Wechatpay-Timestamp {timestamp} is not within {REPLAY_WINDOW_S} s of now"
        )
    try:
        envelope = _Envelope.model_validate_json(body)
    except ValidationError as exc:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", describe_errors(exc.errors())) from exc
    resource = envelope.resource
    if resource.algorithm != "AEAD_AES_256_GCM":
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"resource algorithm {resource.algorithm!r}")
    plaintext = decrypt_resource(apiv3_key, resource.nonce, resource.ciphertext, resource.associated_data)
    if envelope.event_type.startswith("REFUND."):
        return _refund_notice(envelope, _decoded(Refund, plaintext), body, now, ours)
    transaction = _decoded(Transaction, plaintext)
    announced = envelope.event_type == "TRANSACTION.SUCCESS" and transaction.trade_state == "SUCCESS"
    if transaction.amount.currency != "CNY":
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"currency {transaction.amount.currency!r}")
    transaction.check_provider(ours)
    return _notice(
        envelope,
        body,
        "transaction",
        transaction,
        payment_id=f"wechat:{transaction.transaction_id}",
        merchant_id=our_merchant_id(transaction.attach),
        amount_fen=transaction.amount.total,
        status=transaction.trade_state,
        kind=AnnounceKind.PAYMENT if announced else None,
        paid_at=transaction.success_time or now,
    )


def _notice(envelope: _Envelope, body: bytes, name: str, resource: _Parties, **fields: Any) -> PaymentNotice:
    """The notice of a decrypted `resource`, kept with the notification as sent."""
    raw = {"notification": json.loads(body), name: resource.model_dump(mode="json")}
    return PaymentNotice(
        notify_id=envelope.id,
        platform_merchant_id=resource.sub_mchid,
        channel=Channel.WECHAT,
        raw=json.dumps(raw, ensure_ascii=False),
        **fields,
    )


def _decoded(model: type[_M], plaintext: bytes) -> _M:
    try:
        return model.model_validate_json(plaintext)
    except ValidationError as exc:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", describe_errors(exc.errors())) from exc


def _refund_notice(
    envelope: _Envelope, refund: Refund, body: bytes, now: datetime, ours: frozenset[str]
) -> PaymentNotice:
    """A refund of the payment `wechat:<transaction_id>`: its own record, announced as 退款 with
    the amount refunded when it succeeded; ABNORMAL and CLOSED are recorded only."""
    refund.check_provider(ours)
    announced = envelope.event_type == "REFUND.SUCCESS" and refund.refund_status == "SUCCESS"
    return _notice(
        envelope,
        body,
        "refund",
        refund,
        payment_id=refund_payment_id("wechat-refund", refund.refund_id),
        refund_of=f"wechat:{refund.transaction_id}",
        merchant_id=None,  # the refunded payment's merchant
        amount_fen=refund.amount.refund,
        status=refund.refund_status,
        kind=AnnounceKind.REFUND if announced else None,
        paid_at=refund.success_time or now,
    )
