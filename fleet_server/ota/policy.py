"""What a campaign is asked to do and the decisions it makes, pure and I/O-free.

A campaign rolls one release out to the devices its selector names. Each device model is a
**lane** that moves through the waves on its own (cumulative fractions of the lane's devices,
e.g. 1 % → 5 % → 25 % → 100 %, in a fixed pseudo-random order so every wave samples the whole
lane). A lane offers its next wave once every device of the current one has ended and the
wave's success passes `wave_success`; it **pauses** itself as soon as failures the release is to
blame for (artifact does not verify, health check fails, new slot reboots before committing)
pass `pause_failure_rate` of its ended devices after at least `pause_min_devices` have ended.
Transient failures (a download cut too often, a full disk, a device that went quiet) are
offered again up to `max_attempts`; an offline device is `unreachable`, reported apart and
offered again when it returns.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from firmware_protocols.messages import DailySpan, OtaFailure, OtaState


class CampaignStatus(StrEnum):
    """Where a campaign, or one of its lanes, stands."""

    RUNNING = "running"
    PAUSED = "paused"  # by an operator, or by itself on failures the release is to blame for
    COMPLETED = "completed"
    ABORTED = "aborted"  # by an operator; campaigns only


# Target states beyond the device's own (OtaState): not offered yet, offered and not yet
# answered, and offline when its time ran out.
PENDING = "pending"
OFFERED = "offered"
UNREACHABLE = "unreachable"
ENDED = frozenset({OtaState.COMMITTED.value, OtaState.ROLLED_BACK.value, OtaState.FAILED.value, UNREACHABLE})
# Waiting for the install window is not being stuck: no timeout applies.
IN_PROGRESS = frozenset({OFFERED, *(s.value for s in OtaState if not s.terminal and s is not OtaState.WAITING_WINDOW)})
RELEASE_FAILURES = frozenset(f.value for f in OtaFailure if f.blames_release)

Names = Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=100_000)]


class TargetSelector(BaseModel):
    """Which devices a campaign targets: every condition given must hold (an empty list is no
    condition). Devices already on the release's version or newer are left out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: Names = Field(default_factory=list)
    versions: Names = Field(default_factory=list, description="current firmware versions")
    cities: Names = Field(default_factory=list)
    districts: Names = Field(default_factory=list)
    stores: Names = Field(default_factory=list)
    tags: Names = Field(default_factory=list, description="devices with any of these tags")
    devices: Names = Field(default_factory=list, description="an explicit list of device ids")


class CampaignPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    waves: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1, max_length=20)] = [
        0.01,
        0.05,
        0.25,
        1.0,
    ]
    wave_success: Annotated[float, Field(ge=0, le=1)] = 0.95
    pause_failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.02
    pause_min_devices: Annotated[int, Field(ge=1)] = 20
    # Install only outside business hours: this window by default, moved per merchant when it
    # overlaps the merchant's hours (see `install_window`). None: at once (a lab, a hotfix).
    window: DailySpan | None = DailySpan(start="02:00", end="05:00")
    device_timeout_s: Annotated[int, Field(ge=10, le=7 * 86400)] = 3600
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    max_rate_bps: Annotated[int, Field(ge=1024)] | None = 128 * 1024

    @model_validator(mode="after")
    def _waves_grow_to_all(self) -> Self:
        if any(b <= a for a, b in zip(self.waves, self.waves[1:], strict=False)) or self.waves[-1] != 1.0:
            raise ValueError("waves must grow and end at 1.0 (every targeted device)")
        return self


def order_key(campaign_id: str, device_id: str) -> str:
    """A device's place in its lane: pseudo-random, stable, the same on every server."""
    return hashlib.sha256(f"{campaign_id}/{device_id}".encode()).hexdigest()


def wave_of(rank: int, lane_size: int, waves: list[float]) -> int:
    """The wave of the device at `rank` (0-based) among `lane_size`: each wave holds at least one
    more device than the one before while there are devices left."""
    for index, fraction in enumerate(waves):
        if rank < max(math.ceil(fraction * lane_size), index + 1):
            return index
    return len(waves) - 1


def install_window(default: DailySpan | None, business_open: str, business_close: str) -> DailySpan | None:
    """The install window for a merchant open `business_open`-`business_close` (HH:MM local):
    the campaign's window if the shop is closed all through it, else the same length of time
    starting an hour after closing, if the shop stays closed that long, else the default as is
    (a 24-hour shop: the night's quietest hours are the best there is)."""
    if default is None:
        return None
    shop = DailySpan(start=business_open[:5], end=business_close[:5])
    start, end = default.minutes()
    length = (end - start) % 1440 or 1440
    if not _overlaps(shop, start, length):
        return default
    moved = (shop.minutes()[1] + 60) % 1440
    if not _overlaps(shop, moved, length):
        return DailySpan(start=_hhmm(moved), end=_hhmm(moved + length))
    return default


def _overlaps(span: DailySpan, start: int, length: int) -> bool:
    return any(span.contains((start + m) % 1440) for m in range(0, length, 5))


def _hhmm(minute: int) -> str:
    minute %= 1440
    return f"{minute // 60:02d}:{minute % 60:02d}"


@dataclass(frozen=True, slots=True)
class LaneCounts:
    """One lane's devices by where they are, for its current wave and for all waves so far."""

    wave_targets: int  # devices in waves up to the current one
    wave_ended: int
    wave_committed: int
    wave_failed: int  # rolled back or failed, any cause
    ended: int  # over the whole lane: ended and not unreachable
    release_failures: int
    lane_targets: int


@dataclass(frozen=True, slots=True)
class LaneDecision:
    action: str  # "hold" | "advance" | "complete" | "pause"
    reason: str | None = None


def decide(counts: LaneCounts, policy: CampaignPolicy, wave: int) -> LaneDecision:
    """What a running lane does next."""
    if counts.ended >= policy.pause_min_devices and counts.ended > 0:
        rate = counts.release_failures / counts.ended
        if rate > policy.pause_failure_rate:
            return LaneDecision(
                "pause",
                f"release failures {counts.release_failures}/{counts.ended} ({rate:.1%}) "
                f"above {policy.pause_failure_rate:.1%}",
            )
    if counts.wave_ended < counts.wave_targets:
        return LaneDecision("hold")
    tried = counts.wave_committed + counts.wave_failed
    success = counts.wave_committed / tried if tried else 1.0
    if success < policy.wave_success:
        return LaneDecision("pause", f"wave {wave + 1} success {success:.1%} below {policy.wave_success:.1%}")
    if wave + 1 < len(policy.waves) and counts.wave_targets < counts.lane_targets:
        return LaneDecision("advance")
    return LaneDecision("complete")
