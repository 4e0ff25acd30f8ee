"""The rules of field agents' tasks, pure: the statuses a task moves through, the device states
in which a task of each kind counts as fixed, what opening one does to its device's state, how
long each kind may stay open before it is escalated, and why a task may be cancelled.

    open → in_progress → verifying → closed
      └──────────────────┘ (close may be asked from open too)
    open / in_progress / verifying ──cancel (reason)──▶ closed
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from fleet_server.devices.states import DeviceState, Signal
from fleet_server.inspection.detectors import FindingKind


class TaskStatus(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    VERIFYING = "verifying"
    CLOSED = "closed"


# The device states in which a task of each kind counts as fixed.
FIXED_WHEN: Final = {
    FindingKind.FAULTY: {DeviceState.IN_SERVICE, DeviceState.IDLE},
    FindingKind.LOST: {DeviceState.IN_SERVICE, DeviceState.IDLE, DeviceState.RETIRED},
    FindingKind.RELOCATED: {DeviceState.IN_SERVICE, DeviceState.IDLE},
    FindingKind.IDLE: {DeviceState.IN_SERVICE, DeviceState.RETIRED},
    FindingKind.CLOCK: {DeviceState.IN_SERVICE, DeviceState.IDLE},
    FindingKind.DEGRADED: {DeviceState.IN_SERVICE, DeviceState.IDLE},
}
# What a newly opened task does to its device's state (a clock or degraded task: nothing, the
# device works).
SIGNAL_OF: Final = {
    FindingKind.FAULTY: Signal.FAULT,
    FindingKind.LOST: Signal.LOST_DETECTED,
    FindingKind.RELOCATED: Signal.RELOCATED_DETECTED,
    FindingKind.IDLE: Signal.IDLE_DETECTED,
}
# The kinds whose work puts the device under repair when a field agent starts it: a failure
# being repaired. Work on a degraded part, a clock, a lost or moved device is no repair.
REPAIRS: Final = frozenset({FindingKind.FAULTY})

# How long a task of each kind may stay open before it is escalated to the store's channels and
# ops (hours): a speaker that cannot announce costs the merchant now; a degraded part can wait.
SLA_H: Final = {
    FindingKind.FAULTY: 4.0,
    FindingKind.LOST: 24.0,
    FindingKind.RELOCATED: 24.0,
    FindingKind.IDLE: 72.0,
    FindingKind.CLOCK: 24.0,
    FindingKind.DEGRADED: 48.0,
}


class CancelReason(StrEnum):
    FALSE_ALARM = "false_alarm"  # 误报: nothing was wrong; the same finding is held back a while
    DUPLICATE = "duplicate"  # 重复: another task covers it
    MERCHANT_CLOSED = "merchant_closed"  # 商户停业: the merchant closed for good
    OTHER = "other"


CANCEL_REASONS_ZH: Final = {
    CancelReason.FALSE_ALARM: "误报",
    CancelReason.DUPLICATE: "重复",
    CancelReason.MERCHANT_CLOSED: "商户停业",
    CancelReason.OTHER: "其他",
}
