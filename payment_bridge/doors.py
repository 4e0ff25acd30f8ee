"""The doors a payment comes in by, each verified as its sender specifies: our backend's signed
JSON (`notifications`), Alipay (`alipay`), WeChat Pay (`wechatpay`), UnionPay (`unionpay`).
Whichever door, the answer is the same `PaymentNotice`, or `NotificationRejected`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from payment_bridge.alipay import verify_alipay_notification
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
    """The notice `body` (and `headers`, with lower-case names) carries, as its door verifies it."""
    if door == "backend":
        signature, sign_type = headers.get(SIGNATURE_HEADER.lower()), headers.get(SIGN_TYPE_HEADER.lower())
        return verify_backend_notification(body, signature, sign_type, backend_key)
    if door == "alipay":
        return verify_alipay_notification(body, keys.alipay(), ours=keys.alipay_app_ids)
    if door == "unionpay":
        return verify_unionpay_notification(body, keys.unionpay_chain(), now)
    return verify_wechatpay_notification(
        body, headers, platform_key=keys.wechatpay, apiv3_key=keys.apiv3_key(), now=now, ours=keys.wechatpay_mchids
    )
