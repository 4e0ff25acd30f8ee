"""The device state machine: which state a device is in, and what moves it.

Pure: `next_state(current, signal)` says where a signal takes a device, or None when it stays.
Signals come from ingest (presence, heartbeats, health reports, fault events), from the
inspection detectors, from field agents' tasks and from the registry. Every change is stored
with its cause in `device_states`; the reliability figures are computed from that history, so
the groups of states below *are* the figures' definitions (docs/architecture.md).

    never seen ──seen──▶ in_service ◀──────────── healthy (verified) ─────────────┐
                          │  ▲   ▲                                                  │
          offline/missed  │  │   └─ seen / back in place / active                   │
                          ▼  │                                                      │
                        offline ──lost──▶ suspected_lost         faulty ──repair──▶ under_repair
                                                                   ▲
                 in_service / idle / relocated / offline ──fault───┘
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class DeviceState(StrEnum):
    IN_SERVICE = "in_service"  # 在用: online and working
    OFFLINE = "offline"  # 离线: last will, or heartbeats missed
    FAULTY = "faulty"  # 故障: a fault detected, not yet verified fixed
    UNDER_REPAIR = "under_repair"  # 维修中: a field agent is working on it
    IDLE = "idle"  # 停用: online, but the merchant stopped taking payments
    SUSPECTED_LOST = "suspected_lost"  # 疑似遗失: offline for days without a planned removal
    RELOCATED = "relocated"  # 移机: working, but away from where it was installed
    RETIRED = "retired"  # 退役: removed from service on purpose


class Signal(StrEnum):
    SEEN = "seen"  # any message from the device
    PRESENCE_OFFLINE = "presence_offline"  # its last will or a clean disconnect
    HEARTBEAT_MISSED = "heartbeat_missed"  # nothing for 1.5 x the expected interval
    FAULT = "fault"  # a fault event, a failing audio self-test, or the faulty detector
    HEALTHY = "healthy"  # enough consecutive clean health reports: verified healthy
    REPAIR_STARTED = "repair_started"  # a field agent started work on its task
    IDLE_DETECTED = "idle_detected"
    ACTIVE = "active"  # the merchant takes payments again
    LOST_DETECTED = "lost_detected"
    RELOCATED_DETECTED = "relocated_detected"
    BACK_IN_PLACE = "back_in_place"  # serving cells match the installation again
    RETIRE = "retire"  # returned, scrapped, lost or stolen (the lifecycle, `fleet_server.lifecycle`)
    INSTALLED = "installed"  # installed at a merchant by a field agent: deployed from now


S = DeviceState

# Groups used by the figures (see docs/architecture.md, "Reliability figures").
# Up: the device announces payments for its merchant.
UP_STATES: Final = frozenset({S.IN_SERVICE, S.IDLE, S.RELOCATED})
# Failure downtime: from the fault detected to the device verified healthy.
FAILURE_STATES: Final = frozenset({S.FAULTY, S.UNDER_REPAIR})
# Good (完好): not faulty, not being repaired, not lost, not moved away. Offline counts as good:
# merchants switch speakers off at night; the power-on rate measures that.
GOOD_STATES: Final = frozenset({S.IN_SERVICE, S.IDLE, S.OFFLINE})
# Expected to work at all: deployed and not retired.
DEPLOYED_STATES: Final = frozenset(S) - {S.RETIRED}

_ONLINE_FROM: Final = {S.OFFLINE, S.SUSPECTED_LOST}


def next_state(current: DeviceState | None, signal: Signal) -> DeviceState | None:
    """Where `signal` takes a device in `current` (None: never seen); None when it stays."""
    if current is S.RETIRED:
        # Retired until installed again (`lifecycle`: back from repair, or stocked after a switch-on
        # before it was registered); a retired device that talks again is a finding, not a state.
        return S.IN_SERVICE if signal is Signal.INSTALLED else None
    if signal is Signal.RETIRE:
        return S.RETIRED
    if current is None:
        return S.FAULTY if signal is Signal.FAULT else S.IN_SERVICE if signal in _FIRST_CONTACT else None
    target = _TABLE.get((current, signal))
    return target if target is not current else None


# A device registered before the lifecycle is deployed when first seen; one from stock when installed.
_FIRST_CONTACT: Final = frozenset({Signal.SEEN, Signal.HEALTHY, Signal.INSTALLED})

_TABLE: Final[dict[tuple[DeviceState, Signal], DeviceState]] = {
    **{(state, Signal.SEEN): S.IN_SERVICE for state in _ONLINE_FROM},
    **{(state, Signal.HEALTHY): S.IN_SERVICE for state in _ONLINE_FROM | FAILURE_STATES},
    **{(state, Signal.PRESENCE_OFFLINE): S.OFFLINE for state in UP_STATES},
    **{(state, Signal.HEARTBEAT_MISSED): S.OFFLINE for state in UP_STATES},
    **{(state, Signal.FAULT): S.FAULTY for state in UP_STATES | _ONLINE_FROM},
    **{(state, Signal.REPAIR_STARTED): S.UNDER_REPAIR for state in DEPLOYED_STATES - {S.IN_SERVICE}},
    (S.IN_SERVICE, Signal.IDLE_DETECTED): S.IDLE,
    (S.IDLE, Signal.ACTIVE): S.IN_SERVICE,
    (S.OFFLINE, Signal.LOST_DETECTED): S.SUSPECTED_LOST,
    (S.IN_SERVICE, Signal.RELOCATED_DETECTED): S.RELOCATED,
    (S.IDLE, Signal.RELOCATED_DETECTED): S.RELOCATED,
    (S.RELOCATED, Signal.BACK_IN_PLACE): S.IN_SERVICE,
}

STATE_NAMES_ZH: Final = {
    S.IN_SERVICE: "在用",
    S.OFFLINE: "离线",
    S.FAULTY: "故障",
    S.UNDER_REPAIR: "维修中",
    S.IDLE: "停用",
    S.SUSPECTED_LOST: "疑似遗失",
    S.RELOCATED: "移机",
    S.RETIRED: "退役",
}
