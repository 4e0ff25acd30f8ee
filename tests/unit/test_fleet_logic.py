"""The device state machine and the inspection detectors: true and false cases for each."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from fleet_server.devices.parts import DEGRADED_PARTS, FAILED_PARTS, Impact, impact_of
from fleet_server.devices.states import DeviceState as S
from fleet_server.devices.states import Signal, next_state
from fleet_server.devices.tracker import DeviceCursor, Observation, fold
from fleet_server.inspection.detectors import (
    CellSeen,
    DeviceFacts,
    FindingKind,
    InspectionThresholds,
    detect_degraded,
    detect_faulty,
    detect_idle,
    detect_lost,
    detect_relocated,
    distance_m,
    home_cells,
    placement,
)

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
T = InspectionThresholds()


@pytest.mark.parametrize(
    ("current", "signal", "expected"),
    [
        (None, Signal.SEEN, S.IN_SERVICE),
        (None, Signal.FAULT, S.FAULTY),
        (None, Signal.PRESENCE_OFFLINE, None),
        (S.IN_SERVICE, Signal.HEARTBEAT_MISSED, S.OFFLINE),
        (S.IN_SERVICE, Signal.SEEN, None),
        (S.OFFLINE, Signal.SEEN, S.IN_SERVICE),
        (S.FAULTY, Signal.SEEN, None),  # a faulty device talking is not a fixed one
        (S.FAULTY, Signal.PRESENCE_OFFLINE, None),  # nor does going offline end the repair clock
        (S.FAULTY, Signal.HEALTHY, S.IN_SERVICE),
        (S.FAULTY, Signal.REPAIR_STARTED, S.UNDER_REPAIR),
        (S.UNDER_REPAIR, Signal.HEALTHY, S.IN_SERVICE),
        (S.IN_SERVICE, Signal.REPAIR_STARTED, None),
        (S.IN_SERVICE, Signal.IDLE_DETECTED, S.IDLE),
        (S.IDLE, Signal.ACTIVE, S.IN_SERVICE),
        (S.IDLE, Signal.FAULT, S.FAULTY),
        (S.OFFLINE, Signal.LOST_DETECTED, S.SUSPECTED_LOST),
        (S.IN_SERVICE, Signal.LOST_DETECTED, None),
        (S.SUSPECTED_LOST, Signal.SEEN, S.IN_SERVICE),
        (S.IN_SERVICE, Signal.RELOCATED_DETECTED, S.RELOCATED),
        (S.RELOCATED, Signal.BACK_IN_PLACE, S.IN_SERVICE),
        (S.RELOCATED, Signal.HEARTBEAT_MISSED, S.OFFLINE),
        (S.FAULTY, Signal.RETIRE, S.RETIRED),
        (S.RETIRED, Signal.SEEN, None),
    ],
)
def test_state_machine(current, signal, expected):
    assert next_state(current, signal) == expected


def test_verification_needs_consecutive_clean_reports():
    device = DeviceCursor(S.FAULTY, 0)
    obs = [
        Observation("D", NOW, Signal.HEALTHY, "health_clean"),
        Observation("D", NOW + timedelta(minutes=1), Signal.FAULT, "audio_selftest_failed"),
        Observation("D", NOW + timedelta(minutes=2), Signal.HEALTHY, "health_clean"),
        Observation("D", NOW + timedelta(minutes=3), Signal.HEALTHY, "health_clean"),
    ]
    transitions = fold(device, obs)
    assert [(t.state, t.at) for t in transitions] == [(S.IN_SERVICE, NOW + timedelta(minutes=3))]
    assert transitions[0].previous is S.FAULTY


def facts(**kwargs):
    base = {"device_id": "D1", "state": S.IN_SERVICE, "last_seen": NOW}
    return DeviceFacts(**{**base, **kwargs})


def test_idle_needs_past_payments_and_a_quiet_spell():
    assert detect_idle(facts(merchant_first_payment_at=None), T, NOW) is None  # never took payments
    recent = facts(merchant_first_payment_at=NOW - timedelta(days=30), merchant_last_payment_at=NOW - timedelta(days=2))
    assert detect_idle(recent, T, NOW) is None
    offline = facts(
        state=S.OFFLINE,
        merchant_first_payment_at=NOW - timedelta(days=30),
        merchant_last_payment_at=NOW - timedelta(days=10),
    )
    assert detect_idle(offline, T, NOW) is None
    quiet = facts(merchant_first_payment_at=NOW - timedelta(days=30), merchant_last_payment_at=NOW - timedelta(days=10))
    finding = detect_idle(quiet, T, NOW)
    assert finding is not None
    assert finding.kind is FindingKind.IDLE
    assert finding.evidence["quiet_days"] == 10.0


def test_faulty_from_state_fault_events_or_flapping_not_from_noise():
    assert detect_faulty(facts(), T, NOW) is None
    assert detect_faulty(facts(fault_events=T.fault_events - 1), T, NOW) is None
    assert detect_faulty(facts(state=S.FAULTY, state_cause="audio_selftest_failed"), T, NOW).confidence == 1.0
    repeated = detect_faulty(facts(fault_events=T.fault_events), T, NOW)
    assert repeated is not None
    assert "fault events" in repeated.evidence["reasons"][0]
    flapping = detect_faulty(facts(reconnects=T.flapping_reconnects), T, NOW)
    assert flapping is not None
    assert "信号" in flapping.action_zh
    # The counts that a task just closed cannot reopen it.
    assert detect_faulty(facts(fault_events=9, recently_closed=frozenset({"faulty"})), T, NOW) is None


@pytest.mark.parametrize(
    ("part", "impact"),
    [
        ("audio", Impact.FAILED),
        ("tts", Impact.FAILED),
        ("modem", Impact.FAILED),
        ("power", Impact.FAILED),
        ("printer", Impact.DEGRADED),
        ("battery", Impact.DEGRADED),
        ("storage", Impact.DEGRADED),
        ("registration", Impact.DEGRADED),
        ("a-part-of-newer-firmware", Impact.DEGRADED),
        (None, Impact.DEGRADED),
        (["audio"], Impact.DEGRADED),  # whatever a device sends as the part
    ],
)
def test_what_a_fault_of_each_part_means(part, impact):
    assert impact_of(part) is impact
    assert FAILED_PARTS.isdisjoint(DEGRADED_PARTS)


def test_a_degraded_part_is_a_maintenance_finding_not_a_fault():
    printer = facts(degraded_events=3, degraded_parts=("printer",))
    assert detect_faulty(printer, T, NOW) is None
    finding = detect_degraded(printer, T, NOW)
    assert finding is not None
    assert (finding.kind, finding.evidence["parts_zh"]) == (FindingKind.DEGRADED, ["打印机"])
    both = detect_degraded(facts(degraded_events=2, degraded_parts=("printer", "battery")), T, NOW)
    assert both is not None
    assert "打印纸" in both.action_zh
    assert "电池" in both.action_zh
    unknown = detect_degraded(facts(degraded_events=1, degraded_parts=("fan",)), T, NOW)
    assert unknown is not None
    assert "远程诊断" in unknown.action_zh
    assert detect_degraded(facts(), T, NOW) is None
    assert detect_degraded(facts(degraded_events=4, recently_closed=frozenset({"degraded"})), T, NOW) is None


def test_a_device_that_keeps_sending_poison_is_a_finding():
    assert detect_faulty(facts(quarantined=T.poison_messages - 1), T, NOW) is None
    poisoning = detect_faulty(facts(quarantined=T.poison_messages), T, NOW)
    assert poisoning is not None
    assert poisoning.evidence["quarantined"] == T.poison_messages
    assert "固件" in poisoning.action_zh
    assert detect_faulty(facts(quarantined=99, recently_closed=frozenset({"faulty"})), T, NOW) is None


def test_lost_after_days_offline_unless_removal_was_planned():
    assert detect_lost(facts(state=S.OFFLINE, last_seen=NOW - timedelta(days=1)), T, NOW) is None
    assert detect_lost(facts(state=S.IN_SERVICE, last_seen=NOW - timedelta(days=9)), T, NOW) is None
    planned = facts(state=S.OFFLINE, last_seen=NOW - timedelta(days=9), planned_removal=True)
    assert detect_lost(planned, T, NOW) is None
    finding = detect_lost(facts(state=S.OFFLINE, last_seen=NOW - timedelta(days=4)), T, NOW)
    assert finding is not None
    assert finding.kind is FindingKind.LOST


def cell(name, area, *, learned, first_h, last_h, reports=5):
    return CellSeen(name, area, learned, NOW - timedelta(hours=first_h), NOW - timedelta(hours=last_h), reports)


HOME = cell("460-0-1A2B-10", "460-0-1A2B", learned=True, first_h=100, last_h=5, reports=300)


def test_relocation_true_and_false_cases():
    # Still at home, a neighbour cell seen in between: not moved.
    neighbour = cell("460-0-1A2B-11", "460-0-1A2B", learned=False, first_h=50, last_h=6)
    assert detect_relocated(facts(cells=(HOME, neighbour)), T, NOW) is None
    # Moved: only a new cell since the last home report, in another tracking area.
    away = cell("460-0-9F00-77", "460-0-9F00", learned=False, first_h=4, last_h=0, reports=6)
    moved = detect_relocated(facts(cells=(HOME, away)), T, NOW)
    assert moved is not None
    assert moved.confidence == 0.9
    assert moved.evidence["new_tracking_area"]
    # One report is a passing handover, not a move.
    blip = cell("460-0-9F00-77", "460-0-9F00", learned=False, first_h=1, last_h=1, reports=1)
    assert detect_relocated(facts(cells=(HOME, blip)), T, NOW) is None
    # Same area, new cell: lower confidence, still over the threshold.
    same_area = cell("460-0-1A2B-99", "460-0-1A2B", learned=False, first_h=4, last_h=0)
    assert detect_relocated(facts(cells=(HOME, same_area)), T, NOW).confidence == 0.6
    # A GPS fix next to the installation says the network changed, not the device.
    installed = (39.99, 116.47)
    near = detect_relocated(facts(cells=(HOME, same_area), install_position=installed, gps=(39.9901, 116.4701)), T, NOW)
    assert near is None
    far = detect_relocated(facts(cells=(HOME, same_area), install_position=installed, gps=(40.05, 116.47)), T, NOW)
    assert far is not None
    assert far.confidence == 0.98
    assert far.evidence["gps_distance_m"] > 6000
    # Nothing learned: nothing to judge by.
    assert detect_relocated(facts(cells=(away,)), T, NOW) is None
    # Nothing learned yet (the first days after install), but a GPS fix far from where the phone
    # stood at install: moved, judged by the install position alone; near it: in place.
    learning = detect_relocated(facts(cells=(away,), install_position=installed, gps=(40.05, 116.47)), T, NOW)
    assert learning is not None
    assert (learning.confidence, learning.evidence["judged_by"]) == (0.9, "install_position")
    assert detect_relocated(facts(cells=(away,), install_position=installed, gps=(39.9901, 116.4701)), T, NOW) is None
    in_place = placement(facts(state=S.RELOCATED, cells=(away,), install_position=installed, gps=(39.9901, 116.47)), T)
    assert in_place is not None
    assert not in_place.away
    assert detect_relocated(facts(cells=(away,), install_position=installed), T, NOW) is None  # no fix
    # Carried away right after install: the cells of its first hours are of the new place; the
    # fix against the install position tells, while those hours last.
    first_hours = cell("460-0-9F00-77", "460-0-9F00", learned=True, first_h=2, last_h=0, reports=20)
    carried = facts(cells=(first_hours,), learning_from=NOW - timedelta(hours=2), install_position=installed)
    moved_early = detect_relocated(dataclasses.replace(carried, gps=(40.05, 116.47)), T, NOW)
    assert moved_early is not None
    assert moved_early.evidence["judged_by"] == "install_position"
    assert detect_relocated(dataclasses.replace(carried, gps=(39.9901, 116.47)), T, NOW) is None
    settled = dataclasses.replace(carried, gps=(40.05, 116.47), learning_from=NOW - timedelta(days=5))
    assert detect_relocated(settled, T, NOW) is None  # learned since: its cells are home now


def test_the_fingerprint_is_where_the_device_began_not_where_it_was_carried_while_learning():
    began = NOW - timedelta(hours=60)
    start = cell("460-0-1A2B-10", "460-0-1A2B", learned=True, first_h=60, last_h=40, reports=20)
    # Moved on the second day: learned (inside the learning days) but not home.
    later = cell("460-0-9F00-77", "460-0-9F00", learned=True, first_h=30, last_h=0, reports=30)
    assert [c.cell for c in home_cells(facts(cells=(start, later), learning_from=began), T)] == [start.cell]
    moved = detect_relocated(facts(cells=(start, later), learning_from=began), T, NOW)
    assert moved is not None
    assert moved.confidence == 0.9
    # A neighbour first seen later, while the device still came back to its first cell: home.
    home_again = cell("460-0-1A2B-10", "460-0-1A2B", learned=True, first_h=60, last_h=1, reports=50)
    neighbour = cell("460-0-1A2B-11", "460-0-1A2B", learned=True, first_h=30, last_h=0, reports=5)
    assert len(home_cells(facts(cells=(home_again, neighbour), learning_from=began), T)) == 2
    assert detect_relocated(facts(cells=(home_again, neighbour), learning_from=began), T, NOW) is None
    # Chained: a neighbour of the neighbour, reached while the first neighbour was still seen.
    second = cell("460-0-1A2B-12", "460-0-1A2B", learned=True, first_h=10, last_h=0, reports=5)
    chain = home_cells(facts(cells=(start, neighbour, second), learning_from=began), T)
    assert [c.cell for c in chain] == [start.cell]  # the first cell was left 40 h ago: not chained
    still = cell("460-0-1A2B-10", "460-0-1A2B", learned=True, first_h=60, last_h=20, reports=20)
    chain = home_cells(facts(cells=(still, neighbour, second), learning_from=began), T)
    assert sorted(c.cell for c in chain) == [still.cell, neighbour.cell, second.cell]
    # A cell seen only before learning began (switched on in the warehouse) is not the fingerprint.
    warehouse = cell("460-0-7777-1", "460-0-7777", learned=True, first_h=200, last_h=190, reports=3)
    assert [c.cell for c in home_cells(facts(cells=(warehouse, start), learning_from=began), T)] == [start.cell]


def test_back_in_place_when_home_cells_are_seen_again():
    came_back = cell("460-0-9F00-77", "460-0-9F00", learned=False, first_h=10, last_h=8)
    where = placement(facts(state=S.RELOCATED, cells=(HOME, came_back)), T)
    assert where is not None
    assert not where.away


def test_distance():
    assert distance_m((39.9, 116.4), (39.9, 116.4)) == 0
    assert distance_m((39.9, 116.4), (40.0, 116.4)) == pytest.approx(11_119, rel=0.01)
