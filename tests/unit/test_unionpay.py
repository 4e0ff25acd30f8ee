"""UnionPay's back notification (ACP 5.1.0) against our verifier: notifications signed with a
test certificate chained to a test root generated here (never UnionPay's keys), and each way
UnionPay's rules refuse one: a changed field, a certificate from another chain, an expired
one, one not issued to 中国银联, a missing signature."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl, urlencode

import pytest

from firmware_protocols.messages import AnnounceKind, Channel
from payment_bridge.errors import NotificationRejected
from payment_bridge.unionpay import signed_digest, signed_string, verify_unionpay_notification
from simulators.platforms import UnionPayChain, UnionPayPlatform

NOW = dt.datetime.now(tz=dt.UTC)


@pytest.fixture(scope="module")
def chain() -> UnionPayChain:
    return UnionPayChain.generate()


def _verify(body: bytes, chain: UnionPayChain, now: dt.datetime = NOW):
    return verify_unionpay_notification(body, [chain.middle, chain.root], now)


def _refused(body: bytes, chain: UnionPayChain, now: dt.datetime = NOW) -> str:
    with pytest.raises(NotificationRejected) as caught:
        _verify(body, chain, now)
    return caught.value.code


def _edit(body: bytes, **fields: str) -> bytes:
    return urlencode({**dict(parse_qsl(body.decode())), **fields}).encode()


def test_a_consumption_is_announced_by_the_merchant_its_mer_id_names(chain):
    body, _ = UnionPayPlatform(chain).notification(
        query_id="7820261201120000123456", mer_id="777290058110048", amount_fen=2000
    )
    notice = _verify(body, chain)
    assert (notice.payment_id, notice.platform_merchant_id, notice.merchant_id, notice.amount_fen) == (
        "unionpay:7820261201120000123456",
        "777290058110048",
        None,
        2000,
    )
    assert (notice.channel, notice.kind) == (Channel.UNIONPAY, AnnounceKind.PAYMENT)


def test_the_signed_string_is_sorted_fields_but_the_signature_and_its_sha256_hex_is_signed():
    fields = {"version": "5.1.0", "txnAmt": "1", "signature": "x", "accessType": "0"}
    assert signed_string(fields) == "accessType=0&txnAmt=1&version=5.1.0"
    # SHA-256 of that string as lower-case hex (computed once with sha256sum): what RSA signs.
    assert signed_digest(fields) == b"cee7e8aad5c28c714c9c8dedbf164875d2211cf8a39efa81cc788ccd2b212845"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"txnAmt": "200000"}, "SIGNATURE_INVALID"),
        ({"merId": "777290058110049"}, "SIGNATURE_INVALID"),
        ({"signature": ""}, "SIGNATURE_MISSING"),
        ({"signPubKeyCert": "not a certificate"}, "CERTIFICATE_INVALID"),
        ({"signMethod": "11"}, "SIGN_TYPE_UNSUPPORTED"),
    ],
    ids=["amount raised", "merchant changed", "no signature", "no certificate", "SM2 sign method"],
)
def test_a_changed_notification_is_refused(change, code, chain):
    body, _ = UnionPayPlatform(chain).notification(
        query_id="78202612011200001", mer_id="777290058110048", amount_fen=2000
    )
    assert _refused(_edit(body, **change), chain) == code


def test_only_unionpay_certificates_of_our_chain_within_validity_are_trusted(chain):
    elsewhere = UnionPayChain.generate()  # the same names, another root: an impostor's chain
    forged, _ = UnionPayPlatform(elsewhere).notification(query_id="78202612011200002", mer_id="777", amount_fen=1)
    assert _refused(forged, chain) == "CERTIFICATE_UNTRUSTED"
    body, _ = UnionPayPlatform(chain).notification(query_id="78202612011200003", mer_id="777", amount_fen=1)
    assert _refused(body, chain, NOW + dt.timedelta(days=400)) == "CERTIFICATE_EXPIRED"
    not_unionpay = UnionPayChain.generate(common_name="041@Z12@某某科技有限公司@00000001")
    signed, _ = UnionPayPlatform(not_unionpay).notification(query_id="78202612011200004", mer_id="777", amount_fen=1)
    assert _refused(signed, not_unionpay) == "CERTIFICATE_NOT_UNIONPAY"
    with pytest.raises(NotificationRejected) as caught:
        verify_unionpay_notification(body, [], NOW)
    assert (caught.value.status, caught.value.code) == (503, "KEY_NOT_CONFIGURED")


def test_a_refund_names_its_payment_a_failure_and_a_cancel_are_recorded_only(chain):
    platform = UnionPayPlatform(chain)
    refund, _ = platform.notification(
        query_id="78202612011300001", mer_id="777", amount_fen=500, txn_type="04", orig_query_id="78202612011200001"
    )
    notice = _verify(refund, chain)
    assert (notice.payment_id, notice.refund_of, notice.kind, notice.amount_fen) == (
        "unionpay-refund:78202612011300001",
        "unionpay:78202612011200001",
        AnnounceKind.REFUND,
        500,
    )
    failed, _ = platform.notification(query_id="78202612011300002", mer_id="777", amount_fen=500, resp_code="34")
    cancel, _ = platform.notification(query_id="78202612011300003", mer_id="777", amount_fen=500, txn_type="31")
    assert _verify(failed, chain).kind is None
    assert _verify(cancel, chain).kind is None
    ours, _ = platform.notification(query_id="78202612011300004", mer_id="777", amount_fen=1, merchant_id="M0001")
    assert _verify(ours, chain).merchant_id == "M0001"
