import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_protocols.errors import SignatureError
from firmware_protocols.messages import Announce
from firmware_protocols.signing import (
    Signer,
    Verifier,
    canonical_bytes,
    decode_public_key,
    encode_public_key,
)


@pytest.fixture
def server_key():
    return Ed25519PrivateKey.generate()


def _announce(**changes):
    fields = {
        "device_id": "SPK1",
        "ts": 1,
        "payment_id": "P1",
        "amount_fen": 1250,
        "channel": "wechat",
        "paid_at": 1,
        "issued_at": 2,
        "ttl_s": 60,
        "key_id": "unset",
    }
    return Announce.model_validate({**fields, **changes})


def test_signed_announce_verifies(server_key):
    signed = Signer(server_key).sign(_announce())
    Verifier([server_key.public_key()]).verify(signed)


@pytest.mark.parametrize(
    "tamper",
    [
        {"amount_fen": 125000},
        {"channel": "alipay"},
        {"payment_id": "P2"},
        {"ttl_s": 3600},
        {"device_id": "SPK2"},
        {"extra_field": "slipped in"},
    ],
)
def test_any_change_breaks_the_signature(server_key, tamper):
    signed = Signer(server_key).sign(_announce())
    forged = Announce.model_validate({**signed.model_dump(), **tamper})
    with pytest.raises(SignatureError, match="does not verify"):
        Verifier([server_key.public_key()]).verify(forged)


def test_unsigned_and_foreign_keys_are_refused(server_key):
    verifier = Verifier([server_key.public_key()])
    with pytest.raises(SignatureError, match="unknown signing key"):
        verifier.verify(Signer(Ed25519PrivateKey.generate()).sign(_announce()))
    signed = Signer(server_key).sign(_announce())
    with pytest.raises(SignatureError, match="unsigned"):
        verifier.verify(signed.model_copy(update={"sig": ""}))
    with pytest.raises(SignatureError, match="not base64"):
        verifier.verify(signed.model_copy(update={"sig": "***"}))


def test_canonical_form_is_sorted_compact_utf8():
    assert canonical_bytes({"b": "微信", "a": 1, "sig": "x"}) == '{"a":1,"b":"微信"}'.encode()


def test_public_key_text_round_trip(server_key):
    text = encode_public_key(server_key.public_key())
    assert len(base64.b64decode(text)) == 32
    assert encode_public_key(decode_public_key(text)) == text
    with pytest.raises(SignatureError):
        decode_public_key("not a key")


def test_verifier_needs_a_key():
    with pytest.raises(SignatureError, match="at least one"):
        Verifier([])
