import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_protocols.errors import MessageError
from firmware_protocols.messages import DOWN_MODELS, UP_MODELS, Ack, AckStatus, Announce, Health, parse_payload


def _health(**extra):
    return {
        "v": 1,
        "type": "health",
        "device_id": "SPK1",
        "ts": 1,
        "uptime_s": 5,
        "volume": 7,
        "queue_depth": 0,
        "played_total": 3,
        **extra,
    }


def test_unknown_fields_are_kept_for_forward_compatibility():
    health = parse_payload(Health, json.dumps(_health(battery_mv=3900)).encode())
    assert health.model_dump()["battery_mv"] == 3900
    assert json.loads(health.to_json())["battery_mv"] == 3900


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps(_health(v=2)).encode(), "v:"),
        (json.dumps(_health(volume=11)).encode(), "volume"),
        (json.dumps(_health(device_id="a/b")).encode(), "device_id"),
        (b" " * 20000, "too large"),
    ],
)
def test_bad_payloads_say_what_is_wrong(payload, reason):
    with pytest.raises(MessageError, match=reason):
        parse_payload(Health, payload, topic="hd/v1/SPK1/up/health")


def test_error_names_the_topic():
    with pytest.raises(MessageError, match="on hd/v1/SPK1/up/health"):
        parse_payload(Health, b"{}", topic="hd/v1/SPK1/up/health")


def test_ack_round_trip():
    ack = Ack(device_id="SPK1", ts=10, payment_id="P1", status=AckStatus.PLAYED, received_at=9, text="十元")
    assert parse_payload(Ack, ack.to_json()) == ack


def test_announce_expiry():
    announce = Announce(
        device_id="SPK1",
        ts=0,
        payment_id="P1",
        amount_fen=1,
        channel="wechat",
        paid_at=0,
        issued_at=1_000,
        ttl_s=60,
        key_id="k",
    )
    assert announce.expires_at() == 61_000


@given(
    st.sampled_from([*UP_MODELS.values(), *DOWN_MODELS.values()]),
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=6)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_decoders_raise_only_message_error(model, payload):
    with contextlib.suppress(MessageError):
        parse_payload(model, payload)
