"""Inspection detectors (设备巡检): what is wrong with a device, from facts about it.

Pure functions over `DeviceFacts` (which `inspector.py` reads from the database) and the
thresholds in settings. Each returns a `Finding` with its evidence, a confidence in [0, 1] and
the action suggested to the field agent, or None.

- idle (停用): in service, but its merchant took no payment for `idle_after_days` after having
  taken payments before;
- faulty (故障): in the faulty state, the audio self-test failing, repeated fault events of parts
  that stop announcements (`fleet_server.devices.parts`), a flapping connection (many
  reconnects), or a stream of messages no consumer can take (held in quarantine: corrupt
  firmware or storage, or someone publishing in its name);
- degraded (待维护): trouble with a part that leaves the device announcing (printer paper,
  battery, storage): a maintenance task, not a failure;
- suspected lost (疑似遗失): offline for more than `lost_after_days` with no planned removal;
- relocated (移机): since it first reported a cell outside its fingerprint it has not been back
  in one, with a few reports to rule out a passing handover; a different tracking area raises
  the confidence, and a GPS fix decides where there is one. The fingerprint is the cells of its
  first hours where it was installed and the cells learned while it still came back to those
  (`home_cells`), so a device moved during its learning days is found too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, Field

from fleet_server.devices.parts import PART_NAMES_ZH
from fleet_server.devices.states import DeviceState
from fleet_server.inspection.placement import Placement as Placement  # noqa: PLC0414 - re-exported with the detectors.
from fleet_server.inspection.placement import distance_m as distance_m  # noqa: PLC0414
from fleet_server.inspection.placement import home_cells as home_cells  # noqa: PLC0414
from fleet_server.inspection.placement import placement

# A device silent for this many of its health intervals is offline.
OFFLINE_AFTER_INTERVALS = 1.5


class InspectionThresholds(BaseModel):
    # The health interval expected of a device that has not said its own (each health report
    # says the device's: `Health.interval_s`); offline after 1.5 x it without a word.
    heartbeat_interval_s: float = Field(default=60.0, gt=0)
    idle_after_days: float = Field(default=7.0, gt=0)
    fault_events: int = Field(default=3, ge=1)  # fault events of failed parts in the last two local days
    flapping_reconnects: int = Field(default=12, ge=2)  # reconnects in the last two local days
    poison_messages: int = Field(default=20, ge=1)  # of its messages quarantined in the last two local days
    lost_after_days: float = Field(default=3.0, gt=0)
    relocation_min_reports: int = Field(default=3, ge=1)
    relocation_min_confidence: float = Field(default=0.6, ge=0, le=1)
    relocation_gps_m: float = Field(default=500.0, gt=0)
    # The cells of a device's first this many hours after installation are where it was installed.
    relocation_anchor_h: float = Field(default=6.0, gt=0)
    # A board clock this far off, even corrected by the agent, is a broken clock (no battery, a
    # drifting crystal): a maintenance task. Reports arriving this far off their own time are a
    # device running on a wrong clock: it misses announces (a fault).
    clock_board_off_s: float = Field(default=600.0, gt=0)
    clock_skew_s: float = Field(default=60.0, gt=0)
    # How often the inspector runs.
    interval_s: float = Field(default=60.0, gt=0)
    # A task cancelled as a false alarm holds the same finding of the same device back this long.
    false_alarm_hold_days: float = Field(default=7.0, gt=0, le=365)


class FindingKind(StrEnum):
    IDLE = "idle"
    FAULTY = "faulty"
    LOST = "lost"
    RELOCATED = "relocated"
    CLOCK = "clock"  # the board's clock is broken, the agent corrects it: maintenance, not a failure
    DEGRADED = "degraded"  # a part that leaves it announcing (printer, battery): maintenance, not a failure


@dataclass(frozen=True, slots=True)
class Finding:
    device_id: str
    kind: FindingKind
    confidence: float
    evidence: dict[str, Any]
    action_zh: str
    action_en: str


@dataclass(frozen=True, slots=True)
class CellSeen:
    cell: str
    area: str
    learned: bool
    first_seen: datetime
    last_seen: datetime
    reports: int


@dataclass(frozen=True, slots=True)
class ClockFacts:
    """The device's clock as `device_clocks` keeps it (migration 0012)."""

    board_offset_ms: int | None = None  # the agent's correction: trusted = board + offset
    skew_ms: int | None = None  # its reports' time minus their arrival
    reported_at: datetime | None = None
    refused_skew_s: int | None = None  # the last connect refused for the clock
    refused_at: datetime | None = None

    def uncorrected_s(self, t: InspectionThresholds, since: datetime) -> int | None:
        """How far off a clock the device runs on now, if it misses announces because of it:
        its reports arrive fast (a delay in the outbox only makes them look slow), or the broker
        refused it and nothing has come since."""
        if self.skew_ms is not None and self.skew_ms > t.clock_skew_s * 1000:
            return round(self.skew_ms / 1000)
        refused_last = self.refused_at is not None and (self.reported_at is None or self.refused_at > self.reported_at)
        if refused_last and self.refused_at is not None and self.refused_at >= since:
            return self.refused_skew_s
        return None


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    device_id: str
    state: DeviceState | None
    last_seen: datetime | None
    planned_removal: bool = False
    merchant_first_payment_at: datetime | None = None
    merchant_last_payment_at: datetime | None = None
    fault_events: int = 0  # of parts that stop announcements (parts.FAILED_PARTS)
    audio_failures: int = 0
    reconnects: int = 0
    degraded_events: int = 0  # fault events of the other parts, and which parts
    degraded_parts: tuple[str, ...] = ()
    quarantined: int = 0
    state_cause: str | None = None
    # Kinds of this device's tasks closed within the counting window (the last two local days):
    # the counts below still hold the events that task was about, so they cannot reopen it.
    recently_closed: frozenset[str] = frozenset()
    cells: tuple[CellSeen, ...] = ()
    install_position: tuple[float, float] | None = None
    # When its cells began to be learned: installation or first contact, whichever is later.
    learning_from: datetime | None = None
    gps: tuple[float, float] | None = None
    clock: ClockFacts = field(default_factory=ClockFacts)
    extra: dict[str, Any] = field(default_factory=dict)


def detect_idle(f: DeviceFacts, t: InspectionThresholds, now: datetime) -> Finding | None:
    if f.state is not DeviceState.IN_SERVICE or f.merchant_first_payment_at is None:
        return None
    quiet_since = f.merchant_last_payment_at or f.merchant_first_payment_at
    quiet_days = (now - quiet_since) / timedelta(days=1)
    if quiet_days < t.idle_after_days:
        return None
    return Finding(
        f.device_id,
        FindingKind.IDLE,
        confidence=min(1.0, 0.6 + 0.4 * (quiet_days - t.idle_after_days) / t.idle_after_days),
        evidence={"last_payment_at": quiet_since.isoformat(), "quiet_days": round(quiet_days, 1)},
        action_zh="回访商户：是否停业、换用其他收款方式，或需要回收设备",
        action_en="Visit the merchant: closed, using another way to get paid, or should the device be collected",
    )


_REPAIR_ACTION = (
    "上门检修：远程诊断后检查喇叭/电源/SIM卡，必要时更换设备",
    "Repair on site: run remote diagnose, check speaker, power and SIM; replace if needed",
)
_POISON_ACTION = (
    "检查设备固件：设备持续发送无法处理的消息，请远程诊断并升级或重刷固件，必要时更换设备",
    "Check the firmware: the device keeps sending messages that cannot be taken; diagnose, update"
    " or reflash it, replace it if need be",
)
_CLOCK_FAULT_ACTION = (
    "设备时钟不对且未能校正，无法连接或播报被判过期："
    "远程诊断看时钟一项，检查 4G 信号（基站授时）和服务器时间地址 time_url，重启设备",
    "The device runs on a wrong clock it could not correct, so it cannot connect or its announces look"
    " expired: run remote diagnose (the clock item), check the 4G signal (network time) and time_url, restart it",
)
_CLOCK_BOARD_ACTION = (
    "设备板载时钟不准（播报程序已自动校正，收款播报不受影响）：下次上门时更换时钟电池或主板",
    "The board's clock is off (the agent corrects it; announcements still work): replace the clock battery or"
    " board at the next visit",
)
_FLAPPING_ACTION = (
    "检查信号与供电：连接频繁中断，建议调整位置或更换SIM卡",
    "Check signal and power: the connection keeps dropping; move the device or change the SIM",
)


def detect_faulty(f: DeviceFacts, t: InspectionThresholds, now: datetime) -> Finding | None:
    reasons: list[str] = []
    if f.state is DeviceState.FAULTY:
        reasons.append(f"state faulty ({f.state_cause or 'unknown cause'})")
    # A failing audio self-test already made the device faulty (ingest); the counts matter on
    # their own: repeated faults of parts that recover, and a flapping connection.
    counts_fresh = FindingKind.FAULTY.value not in f.recently_closed
    if counts_fresh and f.fault_events >= t.fault_events:
        reasons.append(f"{f.fault_events} fault events")
    flapping = counts_fresh and f.reconnects >= t.flapping_reconnects
    if flapping:
        reasons.append(f"connection flapping: {f.reconnects} reconnects")
    poisoning = counts_fresh and f.quarantined >= t.poison_messages
    if poisoning:
        reasons.append(f"{f.quarantined} messages quarantined")
    clock_off_s = f.clock.uncorrected_s(t, now - timedelta(days=2))
    if clock_off_s is not None:
        reasons.append(f"clock off by {clock_off_s:+d} s, not corrected")
    if not reasons:
        return None
    audio = (f.state_cause or "").startswith(("audio", "fault_audio"))
    only_flapping = flapping and len(reasons) == 1
    action = (
        _POISON_ACTION
        if poisoning and len(reasons) == 1
        else _FLAPPING_ACTION
        if only_flapping
        else _CLOCK_FAULT_ACTION
        if clock_off_s is not None and len(reasons) == 1
        else _REPAIR_ACTION
    )
    return Finding(
        f.device_id,
        FindingKind.FAULTY,
        confidence=1.0 if f.state is DeviceState.FAULTY or audio else 0.8,
        evidence={
            "reasons": reasons,
            "fault_events": f.fault_events,
            "audio_failures": f.audio_failures,
            "reconnects": f.reconnects,
            "quarantined": f.quarantined,
            "clock_off_s": clock_off_s,
        },
        action_zh=action[0],
        action_en=action[1],
    )


# What to do about each degraded part; a part not listed gets the general check.
_DEGRADED_ACTIONS: Final = {
    "printer": (
        "打印机缺纸或故障：上门补充打印纸、检查纸仓盖（收款播报不受影响）",
        "The receipt printer is out of paper or failing: refill it, check the cover (announcements still work)",
    ),
    "battery": (
        "电池电量低或老化：检查电源适配器，必要时更换电池（收款播报不受影响）",
        "The battery is low or worn: check the power adapter, replace the battery if need be"
        " (announcements still work)",
    ),
    "storage": (
        "设备存储空间不足：远程诊断后清理或重刷固件（收款播报不受影响）",
        "The device's storage is full: run remote diagnose, clean up or reflash (announcements still work)",
    ),
    "registration": (
        "网络注册不稳定：检查信号，建议调整位置或更换SIM卡（收款播报暂未受影响）",
        "The network registration keeps dropping: check the signal, move the device or change the SIM",
    ),
}
_DEGRADED_GENERAL = (
    "设备部件异常但仍可播报：远程诊断后上门检查",
    "A part reports trouble but the device still announces: run remote diagnose, check on site",
)


def detect_degraded(f: DeviceFacts, t: InspectionThresholds, now: datetime) -> Finding | None:  # noqa: ARG001 - one signature for all detectors.
    """A part that leaves the device announcing reported trouble: a maintenance task, no failure."""
    if f.degraded_events < 1 or FindingKind.DEGRADED.value in f.recently_closed:
        return None
    parts = sorted(f.degraded_parts)
    actions = [_DEGRADED_ACTIONS.get(part, _DEGRADED_GENERAL) for part in parts] or [_DEGRADED_GENERAL]
    unique = list(dict.fromkeys(actions))
    return Finding(
        f.device_id,
        FindingKind.DEGRADED,
        confidence=1.0,
        evidence={
            "parts": parts,
            "parts_zh": [PART_NAMES_ZH.get(part, part) for part in parts],
            "events": f.degraded_events,
        },
        action_zh="；".join(zh for zh, _ in unique),
        action_en="; ".join(en for _, en in unique),
    )


def detect_lost(f: DeviceFacts, t: InspectionThresholds, now: datetime) -> Finding | None:
    if f.planned_removal or f.state not in (DeviceState.OFFLINE, DeviceState.SUSPECTED_LOST) or f.last_seen is None:
        return None
    offline_days = (now - f.last_seen) / timedelta(days=1)
    if offline_days < t.lost_after_days:
        return None
    return Finding(
        f.device_id,
        FindingKind.LOST,
        confidence=min(1.0, 0.7 + 0.3 * (offline_days - t.lost_after_days) / t.lost_after_days),
        evidence={"last_seen": f.last_seen.isoformat(), "offline_days": round(offline_days, 1)},
        action_zh="联系商户确认设备下落；找不到则登记遗失并停用",
        action_en="Call the merchant to find the device; if it is gone, report it lost and retire it",
    )


def detect_relocated(f: DeviceFacts, t: InspectionThresholds, now: datetime) -> Finding | None:  # noqa: ARG001 - one signature for all detectors.
    if f.state not in (DeviceState.IN_SERVICE, DeviceState.IDLE, DeviceState.RELOCATED):
        return None
    where = placement(f, t)
    if where is None or not where.away or where.confidence < t.relocation_min_confidence:
        return None
    return Finding(
        f.device_id,
        FindingKind.RELOCATED,
        confidence=where.confidence,
        evidence=where.evidence,
        action_zh="核实设备位置：未经登记的移机须搬回原址，或按新地址重新登记安装",
        action_en="Check where the device is: move it back, or register the new installation address",
    )


def detect_clock(f: DeviceFacts, t: InspectionThresholds, now: datetime) -> Finding | None:
    """A board clock far off that the agent corrects: the device works; its clock needs a repair."""
    offset = f.clock.board_offset_ms
    if offset is None or abs(offset) <= t.clock_board_off_s * 1000 or FindingKind.CLOCK.value in f.recently_closed:
        return None
    if f.clock.uncorrected_s(t, now - timedelta(days=2)) is not None:
        return None  # not corrected: a fault (detect_faulty), not this
    off_s = round(-offset / 1000)
    return Finding(
        f.device_id,
        FindingKind.CLOCK,
        confidence=1.0,
        evidence={"board_off_s": off_s, "skew_ms": f.clock.skew_ms},
        action_zh=_CLOCK_BOARD_ACTION[0],
        action_en=_CLOCK_BOARD_ACTION[1],
    )


DETECTORS = (detect_faulty, detect_lost, detect_relocated, detect_idle, detect_clock, detect_degraded)


def inspect(f: DeviceFacts, t: InspectionThresholds, now: datetime) -> list[Finding]:
    return [finding for detector in DETECTORS if (finding := detector(f, t, now)) is not None]
