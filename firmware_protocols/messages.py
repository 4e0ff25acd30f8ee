"""Message models of device protocol v1.

Every payload is a UTF-8 JSON object with a schema version `v` and a `type`. Unknown fields are
kept (`extra="allow"`), so an older reader passes a newer writer's additions through, and they
are covered by the announce signature. Times are integer epoch milliseconds and money is
integer fen (分), so every language reads the same numbers.

Longer than 400 lines because it is the contract: every message of protocol v1 in one module, as
the other implementations (Android, iOS, C) read it, with its one parser.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from firmware_protocols.errors import MessageError

# The field types live in `fields` (release manifests use them too); they are named here as well,
# where readers of the messages look for them: `X as X` is the explicit re-export mypy asks for.
from firmware_protocols.fields import HHMM as HHMM  # noqa: PLC0414
from firmware_protocols.fields import DeviceId as DeviceId  # noqa: PLC0414
from firmware_protocols.fields import EpochMs as EpochMs  # noqa: PLC0414
from firmware_protocols.fields import Identifier as Identifier  # noqa: PLC0414
from firmware_protocols.fields import PaymentId as PaymentId  # noqa: PLC0414
from firmware_protocols.fields import ShortText as ShortText  # noqa: PLC0414
from firmware_protocols.fields import unstorable
from firmware_protocols.ota import ReleaseManifest, VersionText
from firmware_protocols.topics import Down, Up

SCHEMA_VERSION: Final = 1

# Refuse absurd payloads before parsing them: the largest real message (hello with
# capabilities) is well under 2 KiB.
MAX_PAYLOAD_BYTES = 16 * 1024

# The widest of the health columns the fleet stores as 32-bit integers.
INT32_MAX: Final = 2**31 - 1

# 10 billion yuan: far above any single retail payment, and still read correctly.
MAX_AMOUNT_FEN = 10**12
TTL_MAX_S: Final = 24 * 3600  # the longest a signed message may be good for


class Channel(StrEnum):
    """The payment channel a merchant hears named in the announcement."""

    ALIPAY = "alipay"
    WECHAT = "wechat"
    UNIONPAY = "unionpay"
    OTHER = "other"


class AnnounceKind(StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"
    ALERT = "alert"  # a fixed phrase named by `alert`, no amount


class AlertCode(StrEnum):
    """What an alert announcement says. A code, never free text: the device speaks only
    phrases it knows, so no message can make a speaker say something that sounds like money."""

    TEST = "test"  # 测试播报，收款成功: a field agent's test announcement
    BOUND = "bound"  # 设备绑定成功
    UNBOUND = "unbound"  # 设备已解绑


class AckStatus(StrEnum):
    PLAYED = "played"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"
    REFUSED = "refused"
    FAILED = "failed"  # accepted but the speaker could not play it (audio fault)
    SILENCED = "silenced"  # received and handled, not spoken: the merchant's quiet hours or volume 0


# The acks that mean the merchant heard the announcement, or chose not to (quiet hours, volume
# 0): what the delivery rate counts as delivered and the pages show as heard. A duplicate was
# heard when the device first played it.
HEARD: Final = frozenset({AckStatus.PLAYED, AckStatus.DUPLICATE, AckStatus.SILENCED})


# Why the agent (re)started: its first start, a remote reboot, an OTA switch of slots or its
# rollback, a clean stop, or none of these (power cut, crash, watchdog): "unclean".
BootReason = Literal["first_boot", "command", "ota", "rollback", "clean", "unclean"]


class Message(BaseModel):
    """Fields every v1 message carries."""

    model_config = ConfigDict(frozen=True, extra="allow", str_strip_whitespace=False)

    v: Literal[1] = SCHEMA_VERSION
    device_id: DeviceId
    ts: EpochMs

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # Valid JSON that no store can hold (NUL, unpaired surrogates, 65-bit integers, NaN) is
        # refused here, at the boundary, not by PostgreSQL mid-batch (issue 22).
        if (problem := unstorable(data)) is not None:
            raise ValueError(problem)
        return data

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# What a device that signs its reports says in its hello's capabilities (see `reports`).
SIGNED_REPORTS: Final = "signed_reports"

ReportSig = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]


class Report(Message):
    """A message a device sends up. A device that holds a secret signs each one (`reports`):
    HMAC-SHA256 over the canonical bytes, so no one on the broker can forge what it says."""

    sig: ReportSig | None = None


class Presence(Report):
    """Retained on `up/presence`; the offline form is also the device's last will.

    `session` names one connection (a fresh random value at every connect, the same in the
    online presence and in the will set for that connection): an `offline` counts only for the
    connection the servers saw come online, so an old will replayed later changes nothing."""

    type: Literal["presence"] = "presence"
    online: bool
    reason: Literal["connected", "shutdown", "lost"]
    session: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None


class Hello(Report):
    """Sent on every connect: who the device is and what it runs."""

    type: Literal["hello"] = "hello"
    model: ShortText
    serial: ShortText
    firmware: ShortText
    boot_id: ShortText
    capabilities: list[ShortText] = Field(default_factory=list, max_length=32)
    boot_reason: BootReason | None = None
    slot: Literal["a", "b"] | None = None
    build: ShortText | None = None  # the id of the agent build that runs (an update's), if any


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


class GpsFix(BaseModel):
    """A satellite fix, where the device's modem has GNSS: WGS-84 degrees."""

    model_config = ConfigDict(frozen=True, extra="allow")

    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    accuracy_m: Annotated[float, Field(ge=0)] | None = None


class Health(Report):
    """Periodic health report."""

    type: Literal["health"] = "health"
    uptime_s: Annotated[int, Field(ge=0)]
    rssi_dbm: Annotated[int, Field(ge=-150, le=0)] | None = None
    volume: Annotated[int, Field(ge=0, le=10)]
    queue_depth: Annotated[int, Field(ge=0, le=INT32_MAX)]
    played_total: Annotated[int, Field(ge=0)]
    mem_rss_kb: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    # What the device's parts report (absent on devices without the part, or older agents).
    signal_bars: Annotated[int, Field(ge=0, le=5)] | None = None
    modem: Literal["ok", "unreachable"] | None = None
    registration: Literal["home", "roaming", "searching", "denied", "not_registered", "unknown"] | None = None
    cell: CellReport | None = None
    gps: GpsFix | None = None
    iccid: Annotated[str, StringConstraints(pattern=r"^[0-9]{18,20}$")] | None = None
    imei: Annotated[str, StringConstraints(pattern=r"^[0-9]{15}$")] | None = None
    tts: Literal["idle", "busy", "unreachable"] | None = None
    printer: Literal["ok", "paper_low", "paper_out", "cover_open", "error", "offline", "unreachable"] | None = None
    load_1m: Annotated[float, Field(ge=0)] | None = None
    mem_available_kb: Annotated[int, Field(ge=0)] | None = None
    disk_free_kb: Annotated[int, Field(ge=0)] | None = None
    cpu_temp_c: float | None = None
    # The runtime itself: which boot this is and why it happened, what runs and from which slot,
    # how busy the board is, its power, and what has gone wrong since boot.
    boot_id: ShortText | None = None
    boot_reason: BootReason | None = None
    firmware: ShortText | None = None
    slot: Literal["a", "b"] | None = None
    cpu_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    battery_pct: Annotated[int, Field(ge=0, le=100)] | None = None
    charging: bool | None = None
    network: Literal["2g", "3g", "4g", "5g", "wifi", "ethernet"] | None = None
    audio_selftest: Literal["pass", "fail"] | None = None
    settings_version: EpochMs | None = None
    # The device's health interval now (s): the fleet expects its next report within 1.5 x this
    # (absent from older agents: the fleet's default interval is expected of them).
    interval_s: Annotated[float, Field(gt=0, le=86_400)] | None = None
    errors: dict[ShortText, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=32)
    # The board's clock as the device corrects it: trusted time = board clock + offset (ms; a
    # board 5 min fast reports -300000), the source of the correction and its possible error.
    clock_offset_ms: Annotated[int, Field(ge=-(2**53), le=2**53)] | None = None
    clock_source: ShortText | None = None
    clock_error_ms: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None


class Event(Report):
    """Something that happened on the device worth keeping (refused message, fault, ...)."""

    type: Literal["event"] = "event"
    kind: ShortText
    detail: dict[str, Any] = Field(default_factory=dict)


class Signed(Message):
    """A server-to-device message that acts on the device, so it is signed (see `signing`)."""

    key_id: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    sig: Annotated[str, StringConstraints(max_length=128)] = ""

    def describe(self) -> str:
        """What this message is, for errors and logs."""
        return f"{type(self).__name__.lower()} for {self.device_id}"


class Expiring(Signed):
    """A signed message only good for `ttl_s` after `issued_at`: late is as bad as never."""

    issued_at: EpochMs
    ttl_s: Annotated[int, Field(ge=1, le=TTL_MAX_S)]

    def expires_at(self) -> int:
        return self.issued_at + self.ttl_s * 1000


class Announce(Expiring):
    """Play this payment (or refund, or alert). Signed by the server (Ed25519, see `signing`)."""

    type: Literal["announce"] = "announce"
    payment_id: PaymentId
    amount_fen: Annotated[int, Field(ge=0, le=MAX_AMOUNT_FEN)]
    channel: Channel
    kind: AnnounceKind = AnnounceKind.PAYMENT
    paid_at: EpochMs
    alert: AlertCode | None = None

    @model_validator(mode="after")
    def _alert_only_on_alerts(self) -> Self:
        if (self.kind is AnnounceKind.ALERT) != (self.alert is not None):
            raise ValueError("`alert` is required on an alert announce and not allowed on any other kind")
        return self

    def describe(self) -> str:
        return f"announce {self.payment_id} for {self.device_id}"


class Ack(Report):
    """The device's answer to one announce."""

    type: Literal["ack"] = "ack"
    payment_id: PaymentId
    status: AckStatus
    received_at: EpochMs
    play_started_at: EpochMs | None = None
    text: Annotated[str, StringConstraints(max_length=64)] | None = None
    reason: ShortText | None = None


class Command(Expiring):
    """A remote command for the device (diagnose, test announcement, reboot, ...).

    `name` is free text here so that a device can refuse a command it does not know with a
    reason, rather than the message failing to parse."""

    type: Literal["command"] = "command"
    command_id: Identifier
    name: ShortText
    args: dict[str, Any] = Field(default_factory=dict)

    def describe(self) -> str:
        return f"command {self.command_id} ({self.name}) for {self.device_id}"


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"  # taken, running; a final result follows
    REFUSED = "refused"  # not run: unknown, malformed, unsigned, expired
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DUPLICATE = "duplicate"  # this command id was handled before; not run again


class CommandResult(Report):
    """The device's answer to a command: accepted at once, then its outcome."""

    type: Literal["result"] = "result"
    command_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: ShortText
    status: CommandStatus
    reason: ShortText | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class DailySpan(BaseModel):
    """A daily span of local time (quiet hours, an install window); it may cross midnight. A span
    that starts where it ends is empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: HHMM
    end: HHMM

    def minutes(self) -> tuple[int, int]:
        start, end = (int(t[:2]) * 60 + int(t[3:]) for t in (self.start, self.end))
        return start, end

    def contains(self, minute_of_day: int) -> bool:
        start, end = self.minutes()
        if start <= end:
            return start <= minute_of_day < end
        return minute_of_day >= start or minute_of_day < end


class Settings(Signed):
    """The merchant's settings for one device, retained on `down/settings`.

    `version` is when they were saved (epoch ms); a device applies only a newer version than
    the one it holds, so an old retained copy never undoes a newer change."""

    type: Literal["settings"] = "settings"
    version: EpochMs
    volume: Annotated[int, Field(ge=0, le=10)] = 7
    repeat: Annotated[int, Field(ge=1, le=3)] = 1
    quiet_hours: DailySpan | None = None
    voice: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")] = "zh_cn"
    # Quiet hours are local time; China is on UTC+8 everywhere and boards often run in UTC.
    utc_offset_min: Annotated[int, Field(ge=-720, le=840)] = 480

    def describe(self) -> str:
        return f"settings version {self.version} for {self.device_id}"

    def is_quiet(self, now_ms: int) -> bool:
        if self.quiet_hours is None:
            return False
        return self.quiet_hours.contains(local_minute(now_ms, self.utc_offset_min))


class TimeReference(Signed):
    """The server's clock, signed, for a device that cannot trust its own: the answer to
    `GET /api/v1/time?device_id=<id>&nonce=<nonce>` (no sign-in: the device may not be able to
    connect yet). `ts` is the server's clock when it signed; the device's own fresh `nonce` in
    the signed fields makes a recorded answer useless to replay. `max_skew_s` is how far from
    this clock the broker accepts a device's signed MQTT password."""

    type: Literal["time"] = "time"
    nonce: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
    max_skew_s: Annotated[int, Field(ge=1, le=86_400)]

    def describe(self) -> str:
        return f"time reference for {self.device_id}"


def local_minute(now_ms: int, utc_offset_min: int) -> int:
    """The minute of the local day at `now_ms`."""
    return (now_ms // 60_000 + utc_offset_min) % (24 * 60)


class OtaState(StrEnum):
    """Where one device is in one update, reported on every change (`up/ota`)."""

    QUEUED = "queued"  # offer taken, nothing fetched yet
    DOWNLOADING = "downloading"  # resumable; progress in bytes_done
    VERIFYING = "verifying"  # size, SHA-256 and release signature
    WAITING_WINDOW = "waiting_window"  # verified, waiting for the install window
    INSTALLING = "installing"  # writing the inactive slot
    REBOOTING = "rebooting"  # switching to the new slot for a trial boot
    HEALTH_CHECK = "health_check"  # running the new slot, not yet committed
    COMMITTED = "committed"  # the new slot is the one that boots from now on
    ROLLED_BACK = "rolled_back"  # back on the previous slot, which works
    FAILED = "failed"  # not installed; the running slot was never touched

    @property
    def terminal(self) -> bool:
        return self in (OtaState.COMMITTED, OtaState.ROLLED_BACK, OtaState.FAILED)


class OtaFailure(StrEnum):
    """Why an update did not commit."""

    REFUSED = "refused"  # offer or manifest refused: signature, model, rollback, expiry
    DOWNLOAD = "download"  # the artifact could not be fetched within the attempts allowed
    VERIFY = "verify"  # the artifact is not what the manifest says
    INSTALL = "install"  # the inactive slot could not be written (storage)
    HEALTH_CHECK = "health_check"  # the new version runs but fails its health check
    BOOT = "boot"  # the new slot rebooted before it committed (boot counter ran out)
    SUPERSEDED = "superseded"  # a newer offer replaced this one before it installed
    # Trial boots cut from outside (power, kill) more often than the boot control gives back; on
    # a report that is not the end, a trial boot that was cut and is booted again.
    INTERRUPTED = "interrupted"

    @property
    def blames_release(self) -> bool:
        """A failure the release itself causes (not the network, the power or a full disk):
        what pauses a campaign."""
        return self in (OtaFailure.VERIFY, OtaFailure.HEALTH_CHECK, OtaFailure.BOOT)


class OtaOffer(Expiring):
    """Install this release (`down/ota`). Signed by the server like every command; the manifest
    inside is signed again by a release key, which the server does not hold. `ttl_s` bounds how
    late the offer may be taken, not how long the install may take."""

    type: Literal["ota"] = "ota"
    campaign_id: Identifier
    manifest: ReleaseManifest
    url: Annotated[str, StringConstraints(pattern=r"^https?://[\x21-\x7e]{1,500}$")]
    # Install (and reboot) only inside this span of local time; None: at once.
    window: DailySpan | None = None
    utc_offset_min: Annotated[int, Field(ge=-720, le=840)] = 480
    # Download at most this fast, so an update never starves announcements on a thin 4G link.
    max_rate_bps: Annotated[int, Field(ge=1024)] | None = None

    def describe(self) -> str:
        return f"ota offer {self.campaign_id} ({self.manifest.version}) for {self.device_id}"


class OtaStatus(Report):
    """The device's report of one update (`up/ota`), sent on every state change."""

    type: Literal["ota_status"] = "ota_status"
    campaign_id: Identifier
    version: VersionText
    state: OtaState
    running: ShortText  # the version running now
    slot: Literal["a", "b"] | None = None
    bytes_done: Annotated[int, Field(ge=0)] = 0
    bytes_total: Annotated[int, Field(ge=0)] = 0
    attempt: Annotated[int, Field(ge=0)] = 0
    failure: OtaFailure | None = None
    reason: ShortText | None = None


M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=Signed)
R = TypeVar("R", bound=Report)

UP_MODELS: dict[Up, type[Report]] = {
    Up.HELLO: Hello,
    Up.HEALTH: Health,
    Up.EVENT: Event,
    Up.ACK: Ack,
    Up.PRESENCE: Presence,
    Up.RESULT: CommandResult,
    Up.OTA: OtaStatus,
}
DOWN_MODELS: dict[Down, type[Message]] = {
    Down.ANNOUNCE: Announce,
    Down.COMMAND: Command,
    Down.SETTINGS: Settings,
    Down.OTA: OtaOffer,
}


def parse_payload(model: type[M], payload: bytes | bytearray, *, topic: str = "") -> M:
    """Decode and validate one payload, or raise `MessageError` saying what is wrong and where."""
    return validate_fields(model, decode_payload(model, payload, topic=topic), topic=topic)


def decode_payload(model: type[Message], payload: bytes | bytearray, *, topic: str = "") -> dict[str, Any]:
    """The JSON object of a payload for `model` (named in errors), not yet validated: what a
    report's signature covers (`reports`); `MessageError` if it is not one."""
    where = f" on {topic}" if topic else ""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"{model.__name__}{where}: payload of {len(payload)} bytes is too large")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"{model.__name__}{where}: not UTF-8 JSON: {exc}") from exc
    except RecursionError:
        # json.loads recurses per nesting level: 16 KB of "[" is deeper than Python's stack
        # allows (found by the hostile-input suite, issue 10).
        raise MessageError(f"{model.__name__}{where}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise MessageError(f"{model.__name__}{where}: payload must be a JSON object")
    return data


def validate_fields(model: type[M], data: Mapping[str, Any], *, topic: str = "") -> M:
    """A decoded payload validated as `model`, or `MessageError` naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = f" on {topic}" if topic else ""
        raise MessageError(f"{model.__name__}{where}: {describe_errors(exc.errors())}") from exc


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line naming each bad field and what is wrong with it (pydantic's `errors()` list)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in errors)
