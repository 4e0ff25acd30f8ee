"""Alipay's asynchronous notification (异步通知), verified as Alipay specifies.

    POST /api/v1/notifications/alipay
    Content-Type: application/x-www-form-urlencoded; charset=utf-8

    notify_id=...&trade_no=2026112122001...&out_trade_no=...&trade_status=TRADE_SUCCESS
    &total_amount=12.50&gmt_payment=2026-11-21 12:00:00&passback_params=M0001&sign_type=RSA2&sign=...

The signed content is every parameter except `sign` and `sign_type`, and except those with an
empty value, sorted by name, as `name=value` joined with `&`, the values URL-decoded; the
signature is RSA2 (SHA256withRSA) with the Alipay public key. Only `TRADE_SUCCESS` and
`TRADE_FINISHED` are announced; one trade is one payment (`alipay:<trade_no>`), so a
TRADE_FINISHED after the TRADE_SUCCESS of the same trade is a repeat. `app_id` must be ours
(Alipay asks integrators to check it; in ISV mode `auth_app_id` is the merchant's authorising
app, kept with the payment). The merchant is the one our backend named in `passback_params`
when it created the order, when it holds a merchant id of ours; else the merchant whose Alipay
`seller_id` (its PID, 2088...) it is. A refund comes as the trade's notification again with
`refund_fee` (the refunds so far), `out_biz_no` and `gmt_refund`: its own record
(`alipay-refund:<trade_no>:<out_biz_no>`), announced as 退款. Alipay expects the literal body
`success` once the notification is safely recorded, and retries anything else.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from firmware_protocols.messages import MAX_AMOUNT_FEN, AnnounceKind, Channel
from payment_bridge import rsa2
from payment_bridge.errors import NotificationRejected
from payment_bridge.notifications import (
    AMOUNT_PATTERN,
    MAX_BODY_BYTES,
    PaymentNotice,
    check_provider,
    our_merchant_id,
    parse_yuan,
    refund_payment_id,
)

ANNOUNCED_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
KNOWN_STATUSES = ANNOUNCED_STATUSES | {"WAIT_BUYER_PAY", "TRADE_CLOSED"}
# Alipay's times are Beijing time without a zone.
_BEIJING = timezone(timedelta(hours=8))
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_IDENTIFIER = re.compile(r"^[\x21-\x7e]{1,64}$")

ANSWER_SUCCESS = "success"
ANSWER_FAILURE = "fail"


def signed_content(params: dict[str, str]) -> str:
    """The string Alipay signs: non-empty parameters but `sign` and `sign_type`, sorted by name."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type") and v != "")


def parse_form(body: bytes) -> dict[str, str]:
    """The form's parameters; a repeated name or bad encoding is refused, not guessed at."""
    if len(body) > MAX_BODY_BYTES:
        raise NotificationRejected(413, "BODY_TOO_LARGE", f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"not a UTF-8 form body: {exc}") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise NotificationRejected(400, "NOTIFICATION_INVALID", f"parameter {name!r} appears twice")
        params[name] = value
    return params


def _time(params: dict[str, str], name: str) -> datetime:
    try:
        return datetime.strptime(params[name], _TIME_FORMAT).replace(tzinfo=_BEIJING)
    except ValueError as exc:
        raise NotificationRejected(
            400, "NOTIFICATION_INVALID", f"{name} {params[name]!r} is not {_TIME_FORMAT}"
        ) from exc


def _required(params: dict[str, str], *names: str) -> None:
    missing = [name for name in names if not params.get(name)]
    if missing:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"missing {', '.join(missing)}")


def verify_alipay_notification(
    body: bytes, public_keys: list[RSAPublicKey], *, ours: frozenset[str] = frozenset()
) -> PaymentNotice:
    """Check size, form, signature, then content; raise `NotificationRejected` for the first problem."""
    params = parse_form(body)
    if not public_keys:
        raise NotificationRejected(503, "KEY_NOT_CONFIGURED", "no Alipay public key is configured")
    charset = params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise NotificationRejected(400, "CHARSET_UNSUPPORTED", f"charset {params['charset']!r}; only UTF-8 is accepted")
    if params.get("sign_type", "RSA2") != "RSA2":
        raise NotificationRejected(400, "SIGN_TYPE_UNSUPPORTED", f"sign type {params['sign_type']!r} is not RSA2")
    signature = params.get("sign")
    if not signature:
        raise NotificationRejected(401, "SIGNATURE_MISSING", "no sign parameter")
    content = signed_content(params).encode()
    if not any(rsa2.verify(key, content, signature) for key in public_keys):
        raise NotificationRejected(401, "SIGNATURE_INVALID", "RSA2 signature does not verify against the Alipay key")
    _required(params, "notify_id", "trade_no", "trade_status", "total_amount")
    if not params.get("passback_params") and not params.get("seller_id"):
        raise NotificationRejected(400, "NOTIFICATION_INVALID", "missing both passback_params and seller_id")
    check_provider("Alipay", "app_id", params.get("app_id"), ours)
    status = params["trade_status"]
    if status not in KNOWN_STATUSES:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"unknown trade_status {status!r}")
    amount_fen = _amount(params, "total_amount")
    for name in ("notify_id", "trade_no", "seller_id"):
        if params.get(name) and not _IDENTIFIER.match(params[name]):
            raise NotificationRejected(400, "NOTIFICATION_INVALID", f"{name} {params[name]!r} is not an identifier")
    if params.get("refund_fee"):
        return _refund_notice(params)
    paid_at = _time(params, "gmt_payment" if params.get("gmt_payment") else "notify_time")
    return PaymentNotice(
        notify_id=params["notify_id"],
        payment_id=f"alipay:{params['trade_no']}",
        merchant_id=our_merchant_id(params.get("passback_params")),
        platform_merchant_id=params.get("seller_id") or None,
        amount_fen=amount_fen,
        channel=Channel.ALIPAY,
        status=status,
        kind=AnnounceKind.PAYMENT if status in ANNOUNCED_STATUSES else None,
        paid_at=paid_at,
        raw=json.dumps(params, ensure_ascii=False),
    )


def _amount(params: dict[str, str], name: str) -> int:
    if not re.fullmatch(AMOUNT_PATTERN, params[name]):
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"{name} {params[name]!r}")
    fen = parse_yuan(params[name])
    if fen > MAX_AMOUNT_FEN:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"{name} {params[name]} is out of range")
    return fen


def _refund_notice(params: dict[str, str]) -> PaymentNotice:
    """A refund, as Alipay tells it: the trade's notification again (TRADE_SUCCESS after a partial
    refund, TRADE_CLOSED after a full one) with `refund_fee` (refunded so far, cumulative),
    `out_biz_no` (the refund request) and `gmt_refund`. Its own record, keyed by the request;
    its amount is what it adds to the refunds recorded before (`refund_total_fen`). Alipay sends
    no amount per refund: should a later refund's notification reach us before an earlier one's,
    the first is announced with all refunded so far and the other with nothing left to add."""
    _required(params, "out_biz_no")
    total = _amount(params, "refund_fee")
    return PaymentNotice(
        notify_id=params["notify_id"],
        payment_id=refund_payment_id("alipay-refund", f"{params['trade_no']}:{params['out_biz_no']}"),
        refund_of=f"alipay:{params['trade_no']}",
        refund_total_fen=total,
        merchant_id=our_merchant_id(params.get("passback_params")),
        platform_merchant_id=params.get("seller_id") or None,
        amount_fen=total,
        channel=Channel.ALIPAY,
        status=params["trade_status"],
        kind=AnnounceKind.REFUND,
        paid_at=_time(params, "gmt_refund" if params.get("gmt_refund") else "notify_time"),
        raw=json.dumps(params, ensure_ascii=False),
    )
