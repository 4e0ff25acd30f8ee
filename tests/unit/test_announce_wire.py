"""The bridge's direct announce bytes are exactly the model's: same fields, order, signature."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from firmware_protocols.announce_wire import signed_announce
from firmware_protocols.messages import MAX_AMOUNT_FEN, AlertCode, Announce, AnnounceKind, Channel
from firmware_protocols.signing import Signer, Verifier

KEY = Ed25519PrivateKey.generate()  # test-only, made for this run
SIGNER, VERIFIER = Signer(KEY), Verifier([KEY.public_key()])

device_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
payment_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)
epoch_ms = st.integers(0, 10**14 - 1)


@st.composite
def announces(draw: st.DrawFn) -> dict[str, object]:
    kind = draw(st.sampled_from(list(AnnounceKind)))
    return {
        "device_id": draw(device_ids),
        "ts": draw(epoch_ms),
        "payment_id": draw(payment_ids),
        "amount_fen": draw(st.integers(0, MAX_AMOUNT_FEN)),
        "channel": draw(st.sampled_from(list(Channel))).value,
        "kind": kind.value,
        "paid_at": draw(epoch_ms),
        "issued_at": draw(epoch_ms),
        "ttl_s": draw(st.integers(1, 24 * 3600)),
        "alert": draw(st.sampled_from(list(AlertCode))).value if kind is AnnounceKind.ALERT else None,
    }


@settings(max_examples=300)
@given(announces())
def test_the_direct_bytes_are_the_models_bytes(fields):
    model = SIGNER.sign(Announce(key_id=SIGNER.key_id, **fields)).to_json()  # type: ignore[arg-type]
    direct = signed_announce(SIGNER, **fields)  # type: ignore[arg-type]
    assert direct == model
    VERIFIER.verify(Announce.model_validate_json(direct))  # and a device takes it


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"device_id": "-bad"}, "device_id"),
        ({"payment_id": "with space"}, "payment_id"),
        ({"payment_id": ""}, "payment_id"),
        ({"amount_fen": -1}, "amount_fen"),
        ({"amount_fen": MAX_AMOUNT_FEN + 1}, "amount_fen"),
        ({"channel": "paypal"}, "channel"),
        ({"kind": "alert"}, "alert"),  # an alert needs its code
        ({"alert": "bound"}, "alert"),  # and only an alert has one
        ({"ttl_s": 0}, "ttl_s"),
        ({"ts": 10**14}, "ts"),
        ({"paid_at": -1}, "paid_at"),
    ],
)
def test_what_the_model_refuses_is_refused(change, why):
    fields = {
        "device_id": "SPK0001",
        "ts": 1_764_000_000_000,
        "payment_id": "P1",
        "amount_fen": 1250,
        "channel": "wechat",
        "kind": "payment",
        "paid_at": 1_764_000_000_000,
        "issued_at": 1_764_000_000_000,
        "ttl_s": 120,
        "alert": None,
    }
    with pytest.raises(ValueError, match=why):
        signed_announce(SIGNER, **{**fields, **change})  # type: ignore[arg-type]
    with pytest.raises(ValidationError):  # the model refuses it too
        Announce(key_id=SIGNER.key_id, **{**fields, **change})  # type: ignore[arg-type]
