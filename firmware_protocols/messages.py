"""Message models of device protocol v1.

Every payload is a UTF-8 JSON object with a schema version `v` and a `type`. Unknown fields are
kept (`extra="allow"`), so an older reader passes a newer writer's additions through, and they
are covered by the announce signature. Times are integer epoch milliseconds and money is
integer fen (分), so every language reads the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from firmware_protocols.errors import MessageError
from firmware_protocols.topics import DEVICE_ID_PATTERN, Down, Up

SCHEMA_VERSION: Final = 1

# Refuse absurd payloads before parsing them: the largest real message (hello with
# capabilities) is well under 2 KiB.
MAX_PAYLOAD_BYTES = 16 * 1024

# 10 billion yuan: far above any single retail payment, and still read correctly.
MAX_AMOUNT_FEN = 10**12

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN.pattern)]
PaymentId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
EpochMs = Annotated[int, Field(ge=0, lt=10**14)]
ShortText = Annotated[str, StringConstraints(max_length=128)]


class Channel(StrEnum):
    """The payment channel a merchant hears named in the announcement."""

    ALIPAY = "alipay"
    WECHAT = "wechat"
    UNIONPAY = "unionpay"
    OTHER = "other"


class AnnounceKind(StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"


class AckStatus(StrEnum):
    PLAYED = "played"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"
    REFUSED = "refused"
    FAILED = "failed"  # accepted but the speaker could not play it (audio fault)


class Message(BaseModel):
    """Fields every v1 message carries."""

    model_config = ConfigDict(frozen=True, extra="allow", str_strip_whitespace=False)

    v: Literal[1] = SCHEMA_VERSION
    device_id: DeviceId
    ts: EpochMs

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class Presence(Message):
    """Retained on `up/presence`; the offline form is also the device's last will."""

    type: Literal["presence"] = "presence"
    online: bool
    reason: Literal["connected", "shutdown", "lost"]


class Hello(Message):
    """Sent on every connect: who the device is and what it runs."""

    type: Literal["hello"] = "hello"
    model: ShortText
    serial: ShortText
    firmware: ShortText
    boot_id: ShortText
    capabilities: list[ShortText] = Field(default_factory=list, max_length=32)


class CellReport(BaseModel):
    """The serving cell, as the modem names it: where the device is, to a few hundred metres."""

    model_config = ConfigDict(frozen=True, extra="allow")

    rat: ShortText | None = None
    mcc: Annotated[int, Field(ge=0, le=999)] | None = None
    mnc: Annotated[int, Field(ge=0, le=999)] | None = None
    area: Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f]{1,8}$")] | None = None
    cell_id: Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f]{1,10}$")] | None = None
    rsrp_dbm: Annotated[int, Field(ge=-160, le=0)] | None = None
    sinr: Annotated[int, Field(ge=-50, le=60)] | None = None


class Health(Message):
    """Periodic health report."""

    type: Literal["health"] = "health"
    uptime_s: Annotated[int, Field(ge=0)]
    rssi_dbm: Annotated[int, Field(ge=-150, le=0)] | None = None
    volume: Annotated[int, Field(ge=0, le=10)]
    queue_depth: Annotated[int, Field(ge=0)]
    played_total: Annotated[int, Field(ge=0)]
    mem_rss_kb: Annotated[int, Field(ge=0)] | None = None
    # What the device's parts report (absent on devices without the part, or older agents).
    signal_bars: Annotated[int, Field(ge=0, le=5)] | None = None
    modem: Literal["ok", "unreachable"] | None = None
    registration: Literal["home", "roaming", "searching", "denied", "not_registered", "unknown"] | None = None
    cell: CellReport | None = None
    iccid: Annotated[str, StringConstraints(pattern=r"^[0-9]{18,20}$")] | None = None
    imei: Annotated[str, StringConstraints(pattern=r"^[0-9]{15}$")] | None = None
    tts: Literal["idle", "busy", "unreachable"] | None = None
    printer: Literal["ok", "paper_low", "paper_out", "cover_open", "error", "offline", "unreachable"] | None = None
    load_1m: Annotated[float, Field(ge=0)] | None = None
    mem_available_kb: Annotated[int, Field(ge=0)] | None = None
    disk_free_kb: Annotated[int, Field(ge=0)] | None = None
    cpu_temp_c: float | None = None


class Event(Message):
    """Something that happened on the device worth keeping (refused message, fault, ...)."""

    type: Literal["event"] = "event"
    kind: ShortText
    detail: dict[str, Any] = Field(default_factory=dict)


class Announce(Message):
    """Play this payment. Signed by the server (Ed25519, see `signing`)."""

    type: Literal["announce"] = "announce"
    payment_id: PaymentId
    amount_fen: Annotated[int, Field(ge=0, le=MAX_AMOUNT_FEN)]
    channel: Channel
    kind: AnnounceKind = AnnounceKind.PAYMENT
    paid_at: EpochMs
    issued_at: EpochMs
    ttl_s: Annotated[int, Field(ge=1, le=24 * 3600)]
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    sig: Annotated[str, StringConstraints(max_length=128)] = ""

    def expires_at(self) -> int:
        return self.issued_at + self.ttl_s * 1000


class Ack(Message):
    """The device's answer to one announce."""

    type: Literal["ack"] = "ack"
    payment_id: PaymentId
    status: AckStatus
    received_at: EpochMs
    play_started_at: EpochMs | None = None
    text: Annotated[str, StringConstraints(max_length=64)] | None = None
    reason: ShortText | None = None


class Command(Message):
    """A remote command for the device (diagnose, test announcement, reboot, ...)."""

    type: Literal["command"] = "command"
    command_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: ShortText
    args: dict[str, Any] = Field(default_factory=dict)


M = TypeVar("M", bound=Message)

UP_MODELS: dict[Up, type[Message]] = {
    Up.HELLO: Hello,
    Up.HEALTH: Health,
    Up.EVENT: Event,
    Up.ACK: Ack,
    Up.PRESENCE: Presence,
}
DOWN_MODELS: dict[Down, type[Message]] = {
    Down.ANNOUNCE: Announce,
    Down.COMMAND: Command,
}


def parse_payload(model: type[M], payload: bytes | bytearray, *, topic: str = "") -> M:
    """Decode and validate one payload, or raise `MessageError` saying what is wrong and where."""
    where = f" on {topic}" if topic else ""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"{model.__name__}{where}: payload of {len(payload)} bytes is too large")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"{model.__name__}{where}: not UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MessageError(f"{model.__name__}{where}: payload must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MessageError(f"{model.__name__}{where}: {describe_errors(exc.errors())}") from exc


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line naming each bad field and what is wrong with it (pydantic's `errors()` list)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in errors)
