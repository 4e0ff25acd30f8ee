"""The doors a payment comes in by, each verified as its sender specifies: our backend's signed
JSON (`notifications`), Alipay (`alipay`), WeChat Pay (`wechatpay`), UnionPay (`unionpay`).
Whichever door, the answer is the same `PaymentNotice`, or `NotificationRejected`; a notice
no store could hold is refused like a malformed one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from firmware_protocols.fields import unstorable
from payment_bridge.alipay import verify_alipay_notification
from payment_bridge.errors import NotificationRejected
from payment_bridge.keyring import PlatformKeys
from payment_bridge.notifications import SIGN_TYPE_HEADER, SIGNATURE_HEADER, PaymentNotice, verify_backend_notification
from payment_bridge.unionpay import verify_unionpay_notification
from payment_bridge.wechatpay import verify_wechatpay_notification

Door = Literal["backend", "alipay", "wechatpay", "unionpay"]


def verify(
    door: Door,
    body: bytes,
    headers: Mapping[str, str],
    *,
    keys: PlatformKeys,
    backend_key: RSAPublicKey,
    now: datetime,
) -> PaymentNotice:
    """The notice `body` (and `headers`, with lower-case names) carries, as its door verifies it,
    and only if it can be stored."""
    if door == "backend":
        signature, sign_type = headers.get(SIGNATURE_HEADER.lower()), headers.get(SIGN_TYPE_HEADER.lower())
        notice = verify_backend_notification(body, signature, sign_type, backend_key)
    elif door == "alipay":
        notice = verify_alipay_notification(body, keys.alipay(), ours=keys.alipay_app_ids)
    elif door == "unionpay":
        notice = verify_unionpay_notification(body, keys.unionpay_chain(), now)
    else:
        notice = verify_wechatpay_notification(
            body, headers, platform_key=keys.wechatpay, apiv3_key=keys.apiv3_key(), now=now, ours=keys.wechatpay_mchids
        )
    # Signed and well formed, and still holding what no store can (a NUL, a lone surrogate):
    # refused here, alone, not by the database in a batch shared with other payments. The JSON
    # the model wrote can hold those only as \u escapes, so only then is it read again.
    if "\\u" in notice.raw and (problem := unstorable(json.loads(notice.raw))) is not None:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"cannot be stored: {problem}")
    return notice
