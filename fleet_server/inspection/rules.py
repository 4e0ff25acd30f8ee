"""The rules of field agents' tasks, pure: the statuses a task moves through, the device states
in which a task of each kind counts as fixed, and what opening one does to its device's state.

    open → in_progress → verifying → closed
      └──────────────────┘ (close may be asked from open too)
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
}
# What a newly opened task does to its device's state (a clock task: nothing, the device works).
SIGNAL_OF: Final = {
    FindingKind.FAULTY: Signal.FAULT,
    FindingKind.LOST: Signal.LOST_DETECTED,
    FindingKind.RELOCATED: Signal.RELOCATED_DETECTED,
    FindingKind.IDLE: Signal.IDLE_DETECTED,
}
