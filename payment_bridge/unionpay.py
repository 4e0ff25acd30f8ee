"""UnionPay 全渠道 (ACP 5.1.0) back notification (backUrl), verified as UnionPay specifies.

    POST /api/v1/notifications/unionpay
    Content-Type: application/x-www-form-urlencoded; charset=UTF-8

    accessType=0&bizType=000201&currencyCode=156&encoding=UTF-8&merId=777290058110048
    &orderId=...&queryId=...&respCode=00&respMsg=success&signMethod=01&txnAmt=2000&txnSubType=01
    &txnTime=20261201120000&txnType=01&version=5.1.0&reqReserved=M0001
    &signPubKeyCert=-----BEGIN CERTIFICATE-----...&signature=...

The message carries the certificate it was signed with (`signPubKeyCert`). That certificate
must be issued by the configured UnionPay intermediate, itself issued by the configured root,
both within validity now, and must belong to UnionPay: the subject's common name names
中国银联股份有限公司 (UnionPay's own SDKs check its third `@`-separated part). Then the signed
string is every field but `signature`, sorted by name, `name=value` joined by `&`; its SHA-256
as lower-case hex is what was signed, SHA256withRSA, `signature` in base64.

`respCode=00` with `txnType` 01 (consumption) is announced as 云闪付收款; 04 (refund, naming the
payment's `origQryId`) as 退款; anything else (31 cancel, a failed respCode) is recorded only.
One payment is `unionpay:<queryId>`. The merchant is ours in `reqReserved` (echoed as our backend
sent it) when it holds one, else the merchant whose UnionPay `merId` it is. UnionPay retries
until it gets HTTP 200.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509.oid import NameOID

from firmware_protocols.messages import MAX_AMOUNT_FEN, AnnounceKind, Channel
from payment_bridge import rsa2
from payment_bridge.alipay import parse_form
from payment_bridge.errors import NotificationRejected
from payment_bridge.notifications import PaymentNotice, our_merchant_id, refund_payment_id

UNIONPAY_NAME = "中国银联股份有限公司"
CONSUMPTION, REFUND, CANCEL = "01", "04", "31"
_TXN_STATUS = {CONSUMPTION: "SUCCESS", REFUND: "SUCCESS", CANCEL: "CANCELLED"}
_BEIJING = timezone(timedelta(hours=8))
_REQUIRED = ("version", "signMethod", "merId", "txnType", "txnAmt", "txnTime", "queryId", "respCode", "signature")


def signed_string(params: dict[str, str]) -> str:
    """What UnionPay signs: every field but `signature`, sorted by name, `k=v` joined by `&`."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "signature")


def signed_digest(params: dict[str, str]) -> bytes:
    """The SHA-256 of the signed string as lower-case hex: the bytes the RSA signature covers."""
    return hashlib.sha256(signed_string(params).encode("utf-8")).hexdigest().encode("ascii")


def check_certificate(pem: str, chain: Sequence[x509.Certificate], now: datetime) -> RSAPublicKey:
    """The public key of `pem`, if it is UnionPay's signing certificate: issued by `chain[0]`
    (the intermediate), which `chain[1]` (the root) issued, all valid `now`."""
    if len(chain) != 2:
        raise NotificationRejected(
            503, "KEY_NOT_CONFIGURED", "no UnionPay root and intermediate certificates configured"
        )
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError as exc:
        raise NotificationRejected(401, "CERTIFICATE_INVALID", f"signPubKeyCert is not a certificate: {exc}") from exc
    intermediate, root = chain
    for issued, issuer in ((certificate, intermediate), (intermediate, root)):
        try:
            issued.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise NotificationRejected(
                401, "CERTIFICATE_UNTRUSTED", f"{issued.subject.rfc4514_string()} is not issued by our UnionPay chain"
            ) from exc
        if not issued.not_valid_before_utc <= now <= issued.not_valid_after_utc:
            raise NotificationRejected(
                401, "CERTIFICATE_EXPIRED", f"{issued.subject.rfc4514_string()} is not valid at {now.isoformat()}"
            )
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common = str(names[0].value) if names else ""
    if UNIONPAY_NAME not in (common, *common.split("@")[2:3]):
        raise NotificationRejected(401, "CERTIFICATE_NOT_UNIONPAY", f"signPubKeyCert CN {common!r} is not UnionPay's")
    key = certificate.public_key()
    if not isinstance(key, RSAPublicKey):
        raise NotificationRejected(401, "CERTIFICATE_INVALID", "signPubKeyCert does not hold an RSA key")
    return key


def verify_unionpay_notification(body: bytes, chain: Sequence[x509.Certificate], now: datetime) -> PaymentNotice:
    """Check the form, the certificate, the signature, then the content."""
    params = parse_form(body)
    missing = [name for name in _REQUIRED if not params.get(name)]
    if missing and "signature" in missing:
        raise NotificationRejected(401, "SIGNATURE_MISSING", "no signature")
    if params.get("signMethod") != "01":
        raise NotificationRejected(
            400, "SIGN_TYPE_UNSUPPORTED", f"signMethod {params.get('signMethod')!r}; only 01 (RSA)"
        )
    if params.get("encoding", "UTF-8").upper() not in ("UTF-8", "UTF8"):
        raise NotificationRejected(400, "CHARSET_UNSUPPORTED", f"encoding {params['encoding']!r}; only UTF-8")
    key = check_certificate(params.get("signPubKeyCert", ""), chain, now)
    if not rsa2.verify(key, signed_digest(params), params["signature"]):
        raise NotificationRejected(401, "SIGNATURE_INVALID", "signature does not verify against signPubKeyCert")
    if missing:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"missing {', '.join(missing)}")
    if not params["txnAmt"].isdigit() or int(params["txnAmt"]) > MAX_AMOUNT_FEN:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"txnAmt {params['txnAmt']!r}")
    try:
        paid_at = datetime.strptime(params["txnTime"], "%Y%m%d%H%M%S").replace(tzinfo=_BEIJING)
    except ValueError as exc:
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"txnTime {params['txnTime']!r}") from exc
    if params.get("currencyCode", "156") != "156":
        raise NotificationRejected(400, "NOTIFICATION_INVALID", f"currencyCode {params['currencyCode']!r}")
    txn, succeeded = params["txnType"], params["respCode"] == "00"
    refund = txn == REFUND
    if refund and not params.get("origQryId"):
        raise NotificationRejected(400, "NOTIFICATION_INVALID", "a refund names origQryId")
    kind = None
    if succeeded and txn in (CONSUMPTION, REFUND):
        kind = AnnounceKind.REFUND if refund else AnnounceKind.PAYMENT
    return PaymentNotice(
        notify_id=params["queryId"],
        payment_id=refund_payment_id("unionpay-refund", params["queryId"])
        if refund
        else f"unionpay:{params['queryId']}",
        refund_of=f"unionpay:{params['origQryId']}" if refund else None,
        merchant_id=our_merchant_id(params.get("reqReserved")),
        platform_merchant_id=params["merId"],
        amount_fen=int(params["txnAmt"]),
        channel=Channel.UNIONPAY,
        status=_TXN_STATUS.get(txn, f"TXN_{txn}") if succeeded else f"FAIL_{params['respCode']}",
        kind=kind,
        paid_at=paid_at,
        raw=json.dumps({k: v for k, v in params.items() if k != "signPubKeyCert"}, ensure_ascii=False),
    )
