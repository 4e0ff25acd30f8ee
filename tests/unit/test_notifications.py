import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from payment_bridge import rsa2
from payment_bridge.errors import NotificationRejected
from payment_bridge.notifications import verify_backend_notification

BACKEND_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # test-only, made per run
PUBLIC = BACKEND_KEY.public_key()


def body(**changes):
    fields = {
        "notify_id": "N1",
        "payment_id": "P1",
        "merchant_id": "M1",
        "amount": "1059.30",
        "channel": "alipay",
        "status": "SUCCESS",
        "paid_at": "2026-11-21T12:00:00+08:00",
    }
    return json.dumps({**fields, **changes}).encode()


def test_signed_notification_is_accepted_and_amount_is_exact():
    raw = body()
    notification = verify_backend_notification(raw, rsa2.sign(BACKEND_KEY, raw), "RSA2", PUBLIC)
    assert notification.amount_fen == 105930
    assert notification.kind == "payment"


@pytest.mark.parametrize(
    ("raw", "signature", "status", "code"),
    [
        (body(), None, 401, "SIGNATURE_MISSING"),
        (body(), "bm90IGEgc2lnbmF0dXJl", 401, "SIGNATURE_INVALID"),
        (body(), "***", 401, "SIGNATURE_INVALID"),
        (b"x" * 70000, "x", 413, "BODY_TOO_LARGE"),
    ],
)
def test_refusals_carry_status_and_code(raw, signature, status, code):
    with pytest.raises(NotificationRejected) as caught:
        verify_backend_notification(raw, signature, "RSA2", PUBLIC)
    assert (caught.value.status, caught.value.code) == (status, code)


def test_body_changed_after_signing_is_refused():
    signature = rsa2.sign(BACKEND_KEY, body())
    with pytest.raises(NotificationRejected, match="SIGNATURE_INVALID"):
        verify_backend_notification(body(amount="9999.00"), signature, "RSA2", PUBLIC)


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": "12.345"},
        {"amount": "-1"},
        {"channel": "paypal"},
        {"paid_at": "2026-11-21T12:00:00"},
        {"payment_id": ""},
        {"status": "WHATEVER"},
    ],
)
def test_signed_but_malformed_is_refused_with_the_field(changes):
    raw = body(**changes)
    with pytest.raises(NotificationRejected) as caught:
        verify_backend_notification(raw, rsa2.sign(BACKEND_KEY, raw), "RSA2", PUBLIC)
    assert caught.value.code == "NOTIFICATION_INVALID"
    assert next(iter(changes)) in caught.value.reason


def test_only_rsa2_is_accepted():
    raw = body()
    with pytest.raises(NotificationRejected, match="SIGN_TYPE_UNSUPPORTED"):
        verify_backend_notification(raw, rsa2.sign(BACKEND_KEY, raw), "RSA", PUBLIC)


def test_closed_payments_are_recorded_but_not_announced():
    raw = body(status="CLOSED")
    assert verify_backend_notification(raw, rsa2.sign(BACKEND_KEY, raw), None, PUBLIC).kind is None


@settings(max_examples=60, deadline=None)
@given(
    st.binary(max_size=400)
    | st.dictionaries(st.text(max_size=12), st.text(max_size=12) | st.integers(), max_size=8).map(
        lambda d: json.dumps(d).encode()
    )
)
def test_any_signed_body_is_accepted_or_refused_cleanly(raw):
    try:
        verify_backend_notification(raw, rsa2.sign(BACKEND_KEY, raw), "RSA2", PUBLIC)
    except NotificationRejected as exc:
        status = exc.status
    else:
        status = 200
    assert status in {200, 400, 413}
