"""Topic scheme of device protocol v1.

One subtree per device, so that a broker ACL is one rule per device:

    hd/v1/{device_id}/up/{kind}      device → servers   (hello, health, event, ack, presence, result, ota)
    hd/v1/{device_id}/down/{kind}    servers → device   (announce, command, settings, ota)

`up/presence` is retained and is also the device's last will, so a subscriber always finds the
latest online/offline state of every device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from firmware_protocols.errors import MessageError

ROOT = "hd"
VERSION = "v1"

# Device ids must not contain MQTT separators or wildcards; 64 characters fits a serial
# number with a model prefix and stays well inside every broker's topic limit.
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


class Up(StrEnum):
    """What a device publishes."""

    HELLO = "hello"
    HEALTH = "health"
    EVENT = "event"
    ACK = "ack"
    PRESENCE = "presence"
    RESULT = "result"  # answers to commands
    OTA = "ota"  # progress of an update


class Down(StrEnum):
    """What servers publish to a device."""

    ANNOUNCE = "announce"
    COMMAND = "command"
    SETTINGS = "settings"
    OTA = "ota"  # an update offer


@dataclass(frozen=True, slots=True)
class Topic:
    device_id: str
    direction: Direction
    kind: Up | Down

    def __str__(self) -> str:
        return f"{ROOT}/{VERSION}/{self.device_id}/{self.direction}/{self.kind}"


def check_device_id(device_id: str) -> str:
    """Return `device_id` if it is usable in a topic, else raise `MessageError`."""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise MessageError(f"invalid device id {device_id!r}: 1-64 of A-Z a-z 0-9 _ -, starting alphanumeric")
    return device_id


def up(device_id: str, kind: Up) -> str:
    return str(Topic(check_device_id(device_id), Direction.UP, kind))


def down(device_id: str, kind: Down) -> str:
    return str(Topic(check_device_id(device_id), Direction.DOWN, kind))


def device_downlink_filter(device_id: str) -> str:
    """What a device subscribes to: everything sent to it."""
    return f"{ROOT}/{VERSION}/{check_device_id(device_id)}/{Direction.DOWN}/#"


def fleet_uplink_filter(kind: Up) -> str:
    """What a server subscribes to for one kind of uplink message from every device."""
    return f"{ROOT}/{VERSION}/+/{Direction.UP}/{kind}"


def shared(topic_filter: str, group: str | None) -> str:
    """`topic_filter` as a shared subscription of `group` (MQTT 5 `$share`, which Mosquitto 2 and
    EMQX also give 3.1.1 clients): each message goes to one member of the group, so processes
    of one kind split the stream. None: a plain subscription (the embedded amqtt broker has no
    shared subscriptions)."""
    if group is None:
        return topic_filter
    if not group or any(c in group for c in "/+#"):
        raise ValueError(f"share group {group!r} must be a non-empty name without '/', '+' or '#'")
    return f"$share/{group}/{topic_filter}"


def parse(topic: str) -> Topic:
    """Split a v1 topic into its parts, or raise `MessageError` saying what is wrong."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT or parts[1] != VERSION:
        raise MessageError(f"topic {topic!r} is not of the form {ROOT}/{VERSION}/<device>/<dir>/<kind>")
    _, _, device_id, direction, kind = parts
    check_device_id(device_id)
    try:
        if direction == Direction.UP:
            return Topic(device_id, Direction.UP, Up(kind))
        if direction == Direction.DOWN:
            return Topic(device_id, Direction.DOWN, Down(kind))
    except ValueError:
        raise MessageError(f"topic {topic!r}: unknown {direction} message kind {kind!r}") from None
    raise MessageError(f"topic {topic!r}: direction must be 'up' or 'down', not {direction!r}")
