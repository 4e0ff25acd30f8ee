"""A campaign's progress as people read it, pure: targets by lane and state, failures by reason,
the success rate (unreachable devices, and those an abort left never offered, apart), the
devices whose trial boot was cut by the power or a kill (counted apart: not the release's
failure), and an ETA at the last ten minutes' rate."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from firmware_protocols.messages import OtaState
from fleet_server.ota.policy import ENDED, PENDING, UNREACHABLE, CampaignPolicy, CampaignStatus, TargetSelector

# The rate behind the ETA: targets ended within this many seconds.
ETA_WINDOW_S = 600


class LaneView(BaseModel):
    model: str
    wave: int  # 1-based, for people
    waves: int
    status: str
    status_reason: str | None
    targets: int
    by_state: dict[str, int]


class CampaignProgress(BaseModel):
    campaign_id: str
    release_name: str
    version: str
    status: str
    status_reason: str | None
    created_at: datetime
    updated_at: datetime
    policy: CampaignPolicy
    selector: TargetSelector
    targeted: int
    by_state: dict[str, int]
    lanes: list[LaneView]
    failures: dict[str, int]  # by failure (and reason where there is no failure code)
    committed: int
    unreachable: int
    not_offered: int  # an aborted campaign's targets it never offered
    interrupted: int  # targets with a trial boot cut from outside (power, kill), whatever came after
    success_rate: float | None  # committed / targeted, unreachable and never-offered apart
    eta_s: float | None  # at the rate of the last ten minutes; None when nothing moved


def progress_of(
    campaign: dict[str, Any],
    counts: list[dict[str, Any]],
    lanes: list[dict[str, Any]],
    failures: dict[str, int],
    recently_ended: int,
    interrupted: int = 0,
) -> CampaignProgress:
    """From a campaign's row, its (model, state, n) counts, its lanes' rows, its failures by
    code, how many of its targets ended within the ETA window and how many had a trial boot
    interrupted."""
    policy = CampaignPolicy.model_validate(campaign["policy"])
    by_state: dict[str, int] = {}
    lane_states: dict[str, dict[str, int]] = {}
    for row in counts:
        by_state[row["state"]] = by_state.get(row["state"], 0) + row["n"]
        lane_states.setdefault(row["model"], {})[row["state"]] = row["n"]
    total = sum(by_state.values())
    unreachable = by_state.get(UNREACHABLE, 0)
    committed = by_state.get(OtaState.COMMITTED, 0)
    moving = sum(n for s, n in by_state.items() if s not in ENDED)
    active_lanes = {lane["model"] for lane in lanes if lane["status"] == CampaignStatus.RUNNING}
    remaining = sum(
        n for model, states in lane_states.items() if model in active_lanes for s, n in states.items() if s not in ENDED
    )
    running = campaign["status"] == CampaignStatus.RUNNING
    not_offered = by_state.get(PENDING, 0) if campaign["status"] == CampaignStatus.ABORTED else 0
    counted = total - unreachable - not_offered
    return CampaignProgress(
        campaign_id=campaign["campaign_id"],
        release_name=campaign["release_name"],
        version=campaign["version"],
        status=campaign["status"],
        status_reason=campaign["status_reason"],
        created_at=campaign["created_at"],
        updated_at=campaign["updated_at"],
        policy=policy,
        selector=TargetSelector.model_validate(campaign["selector"]),
        targeted=total,
        by_state=by_state,
        lanes=[
            LaneView(
                model=lane["model"],
                wave=lane["wave"] + 1,
                waves=len(policy.waves),
                status=lane["status"],
                status_reason=lane["status_reason"],
                targets=sum(lane_states.get(lane["model"], {}).values()),
                by_state=lane_states.get(lane["model"], {}),
            )
            for lane in lanes
        ],
        failures=failures,
        committed=committed,
        unreachable=unreachable,
        not_offered=not_offered,
        interrupted=interrupted,
        success_rate=committed / counted if counted > 0 else None,
        eta_s=(remaining or moving) / (recently_ended / ETA_WINDOW_S) if recently_ended and running else None,
    )
