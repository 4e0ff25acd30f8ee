import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_protocols import topics
from firmware_protocols.errors import MessageError


def test_topic_scheme():
    assert topics.up("SPK0001", topics.Up.ACK) == "hd/v1/SPK0001/up/ack"
    assert topics.down("SPK0001", topics.Down.ANNOUNCE) == "hd/v1/SPK0001/down/announce"
    assert topics.device_downlink_filter("SPK0001") == "hd/v1/SPK0001/down/#"
    assert topics.fleet_uplink_filter(topics.Up.HEALTH) == "hd/v1/+/up/health"


def test_parse_round_trips():
    parsed = topics.parse("hd/v1/SPK-01/up/presence")
    assert (parsed.device_id, parsed.direction, parsed.kind) == ("SPK-01", topics.Direction.UP, topics.Up.PRESENCE)
    assert str(parsed) == "hd/v1/SPK-01/up/presence"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hd/v1/x",
        "hd/v2/SPK1/up/ack",
        "hd/v1/SPK1/up/nope",
        "hd/v1/SPK1/sideways/ack",
        "hd/v1/+/up/ack",
        "hd/v1/SPK1/up/ack/extra",
        "hd/v1/-SPK/up/ack",
    ],
)
def test_bad_topics_are_refused_with_the_reason(bad):
    with pytest.raises(MessageError, match=r"topic|device id"):
        topics.parse(bad)


@pytest.mark.parametrize("bad_id", ["", "a/b", "a+b", "a#", "x" * 65, "设备"])
def test_device_ids_that_would_break_topics_are_refused(bad_id):
    with pytest.raises(MessageError, match="invalid device id"):
        topics.up(bad_id, topics.Up.HELLO)


@given(st.text(max_size=80))
def test_parse_raises_only_message_error(text):
    with contextlib.suppress(MessageError):
        topics.parse(text)
