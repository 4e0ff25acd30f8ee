"""The lifecycle machine (`fleet_server.lifecycle.stages`), pure."""

from __future__ import annotations

import pytest

from fleet_server.devices.states import DeviceState, Signal, next_state
from fleet_server.devices.tracker import UNDEPLOYED_STAGES
from fleet_server.lifecycle.stages import (
    ACTION_NAMES_ZH,
    DEPLOYED,
    FINAL,
    STAGE_NAMES_ZH,
    UNDEPLOYED,
    Action,
    Stage,
    allowed,
    next_stage,
)


def test_the_tracker_keeps_the_same_stages_off_the_state_machine():
    assert frozenset(s.value for s in UNDEPLOYED) == UNDEPLOYED_STAGES


def test_every_stage_and_action_has_a_chinese_name():
    assert set(STAGE_NAMES_ZH) == set(Stage)
    assert set(ACTION_NAMES_ZH) == set(Action)


@pytest.mark.parametrize("stage", sorted(FINAL))
def test_scrapped_and_lost_are_final(stage):
    assert allowed(stage) == []


def test_every_stage_is_reached_from_stock():
    reached = {Stage.IN_STOCK}
    frontier = [Stage.IN_STOCK]
    while frontier:
        stage = frontier.pop()
        for action in allowed(stage):
            target = next_stage(stage, action)
            assert target is not None
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(Stage)


def test_the_path_through_a_devices_life():
    path = [
        (Action.ALLOCATE, Stage.ALLOCATED),
        (Action.INSTALL, Stage.INSTALLED),
        (Action.COMMISSION, Stage.IN_SERVICE),
        (Action.RETURN, Stage.RETURNED),
        (Action.REPAIR, Stage.IN_REPAIR),
        (Action.RESTOCK, Stage.IN_STOCK),
        (Action.SCRAP, Stage.SCRAPPED),
    ]
    stage = Stage.IN_STOCK
    for action, expected in path:
        stage = next_stage(stage, action)
        assert stage is expected


def test_a_device_registered_before_the_lifecycle_counts_as_in_service():
    assert allowed(None) == allowed(Stage.IN_SERVICE)
    assert next_stage(None, Action.LOSE) is Stage.LOST
    assert next_stage(None, Action.INSTALL) is None


@pytest.mark.parametrize("stage", sorted(DEPLOYED))
def test_a_deployed_device_is_lost_returned_swapped_or_scrapped_but_never_reallocated(stage):
    assert next_stage(stage, Action.LOSE) is Stage.LOST
    assert next_stage(stage, Action.RETURN) is Stage.RETURNED
    assert next_stage(stage, Action.SWAP_OUT) is Stage.RETURNED
    assert next_stage(stage, Action.SCRAP) is Stage.SCRAPPED
    assert next_stage(stage, Action.ALLOCATE) is None
    assert next_stage(stage, Action.RESTOCK) is None


def test_install_deploys_a_device_never_seen_or_retired_and_leaves_a_deployed_one_alone():
    assert next_state(None, Signal.INSTALLED) is DeviceState.IN_SERVICE
    assert next_state(DeviceState.RETIRED, Signal.INSTALLED) is DeviceState.IN_SERVICE  # a second span
    assert next_state(DeviceState.OFFLINE, Signal.INSTALLED) is None
    # Retired, only an install brings it back: a stolen device switched on stays retired.
    for signal in set(Signal) - {Signal.INSTALLED}:
        assert next_state(DeviceState.RETIRED, signal) is None
