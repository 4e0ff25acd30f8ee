"""Hostile input to the trust decoders, and the trust rules as properties (Hypothesis).

Each decoder is fed what an attacker controls and may raise only its documented error:
device passwords and secrets (`CredentialError`), sealed fields and key files
(`FieldCryptError`), message payloads nested past the stack (`MessageError`), broker URLs
(`ProtocolError`), registry CSV (`ImportRefused`). The access rules are checked as properties:
no topic or filter a device can name reaches another device's subtree.
"""

from __future__ import annotations

import contextlib
import json
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_protocols.credentials import (
    CredentialError,
    check_mqtt_password,
    decode_secret,
    derive_device_secret,
    mqtt_password,
)
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.errors import MessageError, ProtocolError
from firmware_protocols.messages import DOWN_MODELS, UP_MODELS, parse_payload
from fleet_server.contacts.cipher import FieldCipher, FieldKeys, mask, normalise
from fleet_server.devices.importer import check_row, read_csv
from fleet_server.errors import FieldCryptError, ImportRefused
from fleet_server.http.ratelimit import RateLimiter
from fleet_server.identity.access import Account, AccountKind, may_publish, may_receive, may_subscribe

# How many hostile examples each property gets; the closing note counts from these.
EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MASTER = os.urandom(32)  # test-only, made per run
SECRET = derive_device_secret(MASTER, "SPK-1", 1)
NOW = 1_800_000_000
CIPHER = FieldCipher(FieldKeys.generate())
ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,12}\Z")
levels = st.sampled_from(["hd", "v1", "up", "down", "+", "#", "$share", "g", "", "SPK-1", "SPK-2", "ack", "x\0"])
topicish = st.lists(levels | st.text(max_size=6), min_size=1, max_size=7).map("/".join)


# -- device credentials -----------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=120) | st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
def test_any_password_is_refused_with_a_credential_error(password: str) -> None:
    with pytest.raises(CredentialError):
        check_mqtt_password(SECRET, "SPK-1", password, NOW)


@FUZZ
@given(st.integers(-(10**6), 10**6), st.sampled_from(["SPK-1", "SPK-2"]), st.binary(min_size=32, max_size=32))
def test_a_password_verifies_only_for_its_device_secret_and_time(skew: int, device: str, secret: bytes) -> None:
    password = mqtt_password(secret, device, NOW + skew)
    valid = secret == SECRET and device == "SPK-1" and abs(skew) <= 600
    if valid:
        check_mqtt_password(SECRET, "SPK-1", password, NOW)
    else:
        with pytest.raises(CredentialError):
            check_mqtt_password(SECRET, "SPK-1", password, NOW)


@FUZZ
@given(st.text(max_size=80))
def test_secrets_decode_or_raise_credential_error(text: str) -> None:
    with contextlib.suppress(CredentialError):
        assert len(decode_secret(text)) == 32


def test_secrets_differ_by_device_and_generation() -> None:
    assert len({derive_device_secret(MASTER, d, g) for d in ("A", "B") for g in (1, 2)}) == 4
    with pytest.raises(CredentialError):
        derive_device_secret(b"short", "A", 1)


# -- broker access rules ----------------------------------------------------------------------


@FUZZ
@given(topicish)
def test_a_device_never_publishes_or_subscribes_outside_its_own_subtree(topic: str) -> None:
    device = Account("SPK-1", AccountKind.DEVICE)
    if may_publish(device, topic):
        assert topic.startswith("hd/v1/SPK-1/up/")
        assert not any(c in topic for c in "+#\0")
    if may_subscribe(device, topic):
        assert topic.startswith("hd/v1/SPK-1/down/")
    if may_receive(device, topic):
        assert topic.startswith("hd/v1/SPK-1/down/")


@FUZZ
@given(topicish)
def test_a_server_never_publishes_as_a_device(topic: str) -> None:
    server = Account("haodian-server", AccountKind.SERVER)
    if may_publish(server, topic):
        assert topic.split("/")[3] == "down"
    if may_subscribe(server, topic):
        assert "/up/" in topic


# -- sealed fields ----------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=60), st.text(max_size=30))
def test_sealed_fields_open_only_in_their_own_row(value: str, other_row: str) -> None:
    sealed = CIPHER.encrypt(value, context="merchants.phone:M1")
    assert sealed != CIPHER.encrypt(value, context="merchants.phone:M1"), "a fresh nonce every time"
    assert CIPHER.decrypt(sealed, context="merchants.phone:M1") == value
    if other_row != "M1":
        with pytest.raises(FieldCryptError):
            CIPHER.decrypt(sealed, context=f"merchants.phone:{other_row}")


@FUZZ
@given(st.text(max_size=120))
def test_any_envelope_opens_or_raises_field_crypt_error(envelope: str) -> None:
    with contextlib.suppress(FieldCryptError):
        CIPHER.decrypt(envelope, context="merchants.phone:M1")
    with contextlib.suppress(FieldCryptError):
        CIPHER.decrypt("k1:" + envelope, context="merchants.phone:M1")


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=50),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["active", "keys", "hash_key", "k1"]), c),
        max_leaves=12,
    )
)
def test_any_key_file_loads_or_raises_field_crypt_error(tmp_path_factory, data: object) -> None:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps(data))
    with contextlib.suppress(FieldCryptError):
        FieldKeys.load(path)


def test_rotation_keeps_old_envelopes_readable_and_marks_them_for_rewrap(tmp_path) -> None:
    old = FieldKeys.generate("k1")
    sealed = FieldCipher(old).encrypt("13800138000", context="c")
    new = FieldKeys("k2", {**old.keys, "k2": os.urandom(32)}, old.hash_key)
    cipher = FieldCipher(new)
    assert cipher.decrypt(sealed, context="c") == "13800138000"
    assert cipher.needs_rewrap(sealed)
    assert not cipher.needs_rewrap(cipher.encrypt("x", context="c"))
    (tmp_path / "k.json").write_text(new.dumps())
    assert FieldKeys.load(tmp_path / "k.json") == new
    assert cipher.lookup_hash("+86 138-0013-8000", kind="phone") == cipher.lookup_hash("13800138000", kind="phone")
    assert normalise("+86 138 0013 8000", "phone") == "13800138000"
    assert mask("13800138000", "phone") == "138****8000"


# -- payloads, URLs, CSV ----------------------------------------------------------------------


@pytest.mark.parametrize("model", [*UP_MODELS.values(), *DOWN_MODELS.values()])
@pytest.mark.parametrize("opener", [b"[", b'{"a":', b"[{"])
def test_payloads_nested_past_the_stack_are_message_errors(model: type, opener: bytes) -> None:
    deep = opener * 5000
    with pytest.raises(MessageError):
        parse_payload(model, deep)


@FUZZ
@given(st.text(alphabet=string.printable, max_size=80))
def test_broker_urls_parse_or_raise_protocol_error(url: str) -> None:
    with contextlib.suppress(ProtocolError):
        BrokerEndpoint.from_url(url)


@FUZZ
@given(st.text(max_size=400))
def test_registry_csv_reads_or_raises_import_error(text: str) -> None:
    with contextlib.suppress(ImportRefused):
        for line, values in read_csv(text):
            check_row(line, values)


# -- rate limits ------------------------------------------------------------------------------


def test_the_rate_limiter_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_s=1.0, burst=3, max_keys=2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [None, None, None]
    wait = limiter.take("a")
    assert wait is not None
    assert wait == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.take("a") is None
    assert limiter.take("b") is None  # keys are independent
    limiter.take("c")  # the table is bounded: the idlest key is forgotten
    assert len(limiter) == 2
