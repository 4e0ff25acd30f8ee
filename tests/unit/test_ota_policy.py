"""Campaign decisions: wave sizes, when a lane moves on or pauses, and install windows that
stay out of a merchant's business hours."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from firmware_protocols.messages import DailySpan
from fleet_server.ota.policy import CampaignPolicy, LaneCounts, decide, install_window, wave_of

POLICY = CampaignPolicy(window=None, pause_failure_rate=0.02, pause_min_devices=20, wave_success=0.95)


def sizes(lane: int, waves: list[float]) -> list[int]:
    """How many devices are offered by the end of each wave."""
    ranks = [wave_of(r, lane, waves) for r in range(lane)]
    return [sum(1 for w in ranks if w <= i) for i in range(len(waves))]


def test_waves_grow_1_5_25_100_percent():
    assert sizes(1000, [0.01, 0.05, 0.25, 1.0]) == [10, 50, 250, 1000]
    assert sizes(300, [0.01, 0.05, 0.25, 1.0]) == [3, 15, 75, 300]


def test_a_small_lane_still_starts_with_one_device_and_grows():
    assert sizes(3, [0.01, 0.05, 0.25, 1.0]) == [1, 2, 3, 3]
    assert sizes(1, [0.01, 1.0]) == [1, 1]


def test_waves_must_grow_and_end_with_everyone():
    with pytest.raises(ValidationError, match="waves must grow"):
        CampaignPolicy(waves=[0.1, 0.05, 1.0])
    with pytest.raises(ValidationError, match="waves must grow"):
        CampaignPolicy(waves=[0.1, 0.5])


def counts(**kw) -> LaneCounts:
    base = {
        "wave_targets": 10,
        "wave_ended": 10,
        "wave_committed": 10,
        "wave_failed": 0,
        "ended": 10,
        "release_failures": 0,
        "lane_targets": 100,
    }
    return LaneCounts(**{**base, **kw})


def test_a_lane_waits_for_its_wave_to_end_then_moves_on():
    assert decide(counts(wave_ended=9), POLICY, 0).action == "hold"
    assert decide(counts(), POLICY, 0).action == "advance"
    assert decide(counts(wave_targets=100, wave_ended=100, wave_committed=100), POLICY, 3).action == "complete"


def test_release_failures_past_the_rate_pause_the_lane_mid_wave():
    below_minimum = counts(wave_ended=5, ended=19, release_failures=5)
    assert decide(below_minimum, POLICY, 1).action == "hold"
    assert decide(counts(wave_ended=5, ended=60, release_failures=1), POLICY, 1).action == "hold"  # 1.7 %
    decision = decide(counts(wave_ended=5, ended=60, release_failures=2), POLICY, 1)  # 3.3 %
    assert decision.action == "pause"
    assert "2/60" in (decision.reason or "")


def test_a_wave_below_its_success_threshold_pauses_the_lane():
    decision = decide(counts(wave_committed=9, wave_failed=1, ended=10), POLICY, 1)
    assert decision.action == "pause"
    assert "wave 2 success 90.0%" in (decision.reason or "")


def test_unreachable_devices_neither_fail_nor_block_a_wave():
    # 10 in the wave: 8 committed, 2 unreachable (ended, not tried)
    assert decide(counts(wave_committed=8, ended=8), POLICY, 0).action == "advance"


NIGHT = DailySpan(start="02:00", end="05:00")


@pytest.mark.parametrize(
    ("open_", "close", "expected"),
    [
        ("08:00", "22:00", NIGHT),  # closed at night: the campaign's window
        ("07:00", "02:30", DailySpan(start="03:30", end="06:30")),  # a late shop: an hour after closing
        ("06:00", "03:00", NIGHT),  # closed only 3 h: no 3 h window an hour after closing
        ("00:00", "00:00", NIGHT),  # open around the clock (an empty span): never overlapping
        ("03:00", "02:00", NIGHT),  # open all but an hour: nothing better than the default
    ],
)
def test_the_install_window_stays_out_of_business_hours(open_, close, expected):
    assert install_window(NIGHT, open_, close) == expected


def test_no_window_means_at_once():
    assert install_window(None, "08:00", "22:00") is None
