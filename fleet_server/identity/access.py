"""The broker's access rules, one place for the embedded broker's plugins and Mosquitto's ACL.

A device's username is its device id. It may publish only under `hd/v1/{id}/up/` and subscribe
only under `hd/v1/{id}/down/`, so a stolen device, or its extracted secret, speaks for that one
device and hears nothing else. Server accounts publish to any device's `down/` and subscribe to
every device's `up/` (directly or as a `$share` group); they cannot publish as a device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from firmware_protocols import topics
from firmware_protocols.errors import MessageError

_PREFIX = f"{topics.ROOT}/{topics.VERSION}/"


class AccountKind(StrEnum):
    DEVICE = "device"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    kind: AccountKind


def _unshared(topic_filter: str) -> str | None:
    """The filter inside `$share/<group>/...`; None for a malformed share."""
    if not topic_filter.startswith("$share/"):
        return topic_filter
    parts = topic_filter.split("/", 2)
    return parts[2] if len(parts) == 3 and parts[1] else None


def _split(topic: str) -> tuple[str, str, str] | None:
    """(device id level, direction, rest) of a `hd/v1/...` topic or filter; None if not one."""
    if not topic.startswith(_PREFIX):
        return None
    parts = topic[len(_PREFIX) :].split("/", 2)
    if len(parts) != 3 or not parts[2]:
        return None
    return parts[0], parts[1], parts[2]


def may_publish(account: Account, topic: str) -> bool:
    if any(c in topic for c in "+#\0"):
        return False
    split = _split(topic)
    if split is None:
        return False
    device, direction, _ = split
    if account.kind is AccountKind.DEVICE:
        return device == account.username and direction == topics.Direction.UP
    return direction == topics.Direction.DOWN and topics.DEVICE_ID_PATTERN.fullmatch(device) is not None


def may_subscribe(account: Account, topic_filter: str) -> bool:
    inner = _unshared(topic_filter)
    if inner is None or "\0" in inner:
        return False
    split = _split(inner)
    if split is None:
        return False
    device, direction, _ = split
    if account.kind is AccountKind.DEVICE:
        # No shared subscriptions for devices, and no wildcard in the device level.
        return inner == topic_filter and device == account.username and direction == topics.Direction.DOWN
    return direction == topics.Direction.UP and (
        device == "+" or topics.DEVICE_ID_PATTERN.fullmatch(device) is not None
    )


def may_receive(account: Account, topic: str) -> bool:
    """A message the broker is about to deliver: devices get only their own downlink (defence in
    depth behind `may_subscribe`)."""
    if account.kind is AccountKind.SERVER:
        return True
    split = _split(topic)
    return split is not None and split[0] == account.username and split[1] == topics.Direction.DOWN


def server_client_id(prefix: str, process: str) -> str:
    """The MQTT client id of a server process, `<prefix>.<process>` (`haodian.ingest`): the dot is
    outside the device id pattern, so no device identity (a device id, or a certificate's name)
    can ever be it, on any broker, and no device can close a server's connection by taking it."""
    client_id = f"{prefix}.{process}"
    if topics.DEVICE_ID_PATTERN.fullmatch(client_id) is not None:  # pragma: no cover - the dot forbids it
        raise ValueError(f"server client id {client_id!r} would be a device id")
    return client_id


def device_identity_refusal(name: str, *, server_accounts: Iterable[str], client_prefix: str) -> str | None:
    """Why `name` may not be a device's identity (a certificate's common name), or None. A device
    identity must be a device id, and never one the servers use: a server account, or anything
    named like the servers (`<prefix>`, `<prefix>-...`; their client ids, `server_client_id`,
    cannot be device ids at all)."""
    try:
        topics.check_device_id(name)
    except MessageError as exc:
        return str(exc)
    if name in set(server_accounts):
        return f"{name!r} is a server account"
    if name == client_prefix or name.startswith(f"{client_prefix}-"):
        return f"{name!r} is (or could be) a server process's client id (prefix {client_prefix!r})"
    return None
