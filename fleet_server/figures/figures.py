"""Reliability figures, computed exactly as DESIGN.md defines them, from stored history only.

Every figure is a ratio of sums taken over the device state history (`device_states`) clipped
to the window, the daily rollup (`device_daily`), the bridge's deliveries and the OTA targets:

| figure | numerator / denominator |
|---|---|
| intact rate 完好率 | time in a good state / time deployed (device-seconds; at an instant, devices) |
| fault rate, per hour | failures / operating hours |
| fault rate, downtime | failure downtime / (operating time + failure downtime) |
| availability, calendar | up time / deployed time |
| availability, business | up time inside the merchant's business hours / deployed time inside them |
| MTBF | operating hours / failures |
| MTTR | mean of (verified healthy - fault detected) over repairs completed in the window |
| power-on rate 开机率 | device-days with any message / device-days deployed, over the window's local days |
| delivery rate 到达率 | announcements played (played, duplicate, silenced) / announcements settled |
| latency p50, p95 | received → playback start, from a fixed histogram (`latency`) |
| OTA success | devices that committed the target / devices targeted (unreachable ones apart) |

The state groups (up, failure, good, deployed) are in `fleet_server.devices.states`; the SQL is in
`queries`. A failure is an
entry into `faulty` from a state that is not already a failure state; a repair is the exit from
a failure run that began with a fault, into an up state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from time import perf_counter
from typing import Any, Final

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols.messages import HEARD
from fleet_server.db.fetch import fetch_dicts, fetch_rows
from fleet_server.devices import rollups
from fleet_server.devices.states import DEPLOYED_STATES, FAILURE_STATES, GOOD_STATES, UP_STATES, DeviceState
from fleet_server.errors import FiguresError
from fleet_server.figures import latency, rolled
from fleet_server.figures.queries import Level as Level  # noqa: PLC0414 - re-exported: figures are asked for by level.
from fleet_server.figures.queries import (
    announced_by_device_days,
    current_states_query,
    figures_query,
    state_counts_query,
)


@dataclass(frozen=True, slots=True)
class Target:
    value: float
    higher_is_better: bool
    # Amber is within this fraction of the way to failing the target; beyond is red.
    amber_margin: float


# The targets of DESIGN.md.
TARGETS: Final = {
    "intact_rate": Target(0.989, True, 0.01),
    "fault_rate_per_hour": Target(0.00001, False, 1.0),
    "availability_calendar": Target(0.9997, True, 0.001),
    "availability_business": Target(0.9997, True, 0.001),
    "mtbf_h": Target(8000.0, True, 0.25),
    "mttr_min": Target(15.0, False, 0.5),
    "power_on_rate": Target(0.99, True, 0.01),
    "delivery_rate": Target(0.9997, True, 0.001),
    "ota_success_rate": Target(1.0, True, 0.01),
}


def rating(name: str, value: float | None) -> str:
    """green / amber / red against the target, or "none" when there is nothing to rate."""
    target = TARGETS.get(name)
    if target is None or value is None:
        return "none"
    if target.higher_is_better:
        if value >= target.value:
            return "green"
        return "amber" if value >= target.value * (1 - target.amber_margin) else "red"
    if value <= target.value:
        return "green"
    return "amber" if value <= target.value * (1 + target.amber_margin) else "red"


class Figures(BaseModel):
    key: str | None
    window_start: datetime
    window_end: datetime
    devices: int
    deployed_hours: float
    operating_hours: float
    failures: int
    repairs: int
    intact_rate: float | None
    fault_rate_per_hour: float | None
    fault_rate_downtime: float | None
    availability_calendar: float | None
    availability_business: float | None
    mtbf_h: float | None
    mttr_min: float | None
    power_on_rate: float | None
    deployed_days: int
    seen_days: int
    announcements: int
    announcements_played: int
    delivery_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ota_targeted: int
    ota_reached: int
    ota_unreachable: int
    ota_success_rate: float | None


FIGURE_NAMES: Final = tuple(TARGETS)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _states(group: frozenset[DeviceState]) -> list[str]:
    return sorted(state.value for state in group)


# What the query gives for a scope with no devices and no payments at all.
_EMPTY_ROW: Final[dict[str, Any]] = {
    **dict.fromkeys(
        ("devices", "deployed_s", "up_s", "failure_s", "good_s", "b_expected_s", "b_up_s", "failures", "repairs"),
        0,
    ),
    **dict.fromkeys(("deployed_days", "seen_days", "announcements", "played"), 0),
    **dict.fromkeys(("ota_targeted", "ota_reached", "ota_unreachable"), 0),
    **dict.fromkeys(("key", "mean_repair_s", "lat")),
}


def figures_from_row(row: dict[str, Any], start: datetime, end: datetime, *, grouped: bool) -> Figures:
    up, failure_s = float(row["up_s"]), float(row["failure_s"])
    operating_h = up / 3600
    failures, mean_repair = int(row["failures"]), row["mean_repair_s"]
    return Figures(
        key=row["key"] if grouped else None,
        window_start=start,
        window_end=end,
        devices=row["devices"],
        deployed_hours=float(row["deployed_s"]) / 3600,
        operating_hours=operating_h,
        failures=failures,
        repairs=row["repairs"],
        intact_rate=_ratio(float(row["good_s"]), float(row["deployed_s"])),
        fault_rate_per_hour=_ratio(failures, operating_h),
        fault_rate_downtime=_ratio(failure_s, up + failure_s),
        availability_calendar=_ratio(up, float(row["deployed_s"])),
        availability_business=_ratio(float(row["b_up_s"]), float(row["b_expected_s"])),
        mtbf_h=_ratio(operating_h, failures),
        mttr_min=None if mean_repair is None else float(mean_repair) / 60,
        power_on_rate=_ratio(row["seen_days"], row["deployed_days"]),
        deployed_days=row["deployed_days"],
        seen_days=row["seen_days"],
        announcements=row["announcements"],
        announcements_played=row["played"],
        delivery_rate=_ratio(row["played"], row["announcements"]),
        latency_p50_ms=latency.quantile(lat, 0.5) if (lat := row["lat"]) else None,
        latency_p95_ms=latency.quantile(lat, 0.95) if lat else None,
        ota_targeted=row["ota_targeted"],
        ota_reached=row["ota_reached"],
        ota_unreachable=row["ota_unreachable"],
        ota_success_rate=_ratio(row["ota_reached"], row["ota_targeted"]),
    )


class FleetFigures:
    def __init__(self, pool: AsyncConnectionPool, *, fleet_utc_offset_min: int = 480) -> None:
        self._pool = pool
        self._offset = fleet_utc_offset_min

    @property
    def fleet_utc_offset_min(self) -> int:
        return self._offset

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    async def compute(
        self,
        start: datetime,
        end: datetime,
        *,
        scope: tuple[Level, str] | None = None,
        group_by: Level | None = None,
    ) -> list[Figures]:
        """Figures over [start, end) for the devices in `scope` (all when None), one row per
        `group_by` key (one row for the whole scope when None): from the rollups when they can
        answer exactly (`rolled.plan`), else from raw history."""
        answer = await self.compute_rolled(start, end, scope=scope, group_by=group_by)
        if answer is not None:
            return answer
        device_days = await self._device_days_answer(start, end, group_by or Level.FLEET, scope)
        return await self.compute_raw(start, end, scope=scope, group_by=group_by, device_days=device_days)

    async def _device_days_answer(
        self, start: datetime, end: datetime, level: Level, scope: tuple[Level, str] | None
    ) -> bool:
        """Whether the deliveries of [start, end) can come from the device rows (migration 0017):
        built for this offset, the window whole local days (the last one possibly live), and no
        payment announced to nobody counting at this level."""
        if not announced_by_device_days(level, scope):
            return False
        local = timedelta(minutes=self._offset)
        live = end >= datetime.now(tz=UTC) - rolled.LIVE_GRACE
        if not all(at == _local_midnight(at, local) for at in ((start,) if live else (start, end))):
            return False
        async with self._pool.connection() as conn, conn.cursor() as cur:
            held = await rollups.clock(cur)
        return held is not None and held.deliveries_offset_min == self._offset

    async def compute_rolled(
        self,
        start: datetime,
        end: datetime,
        *,
        scope: tuple[Level, str] | None = None,
        group_by: Level | None = None,
    ) -> list[Figures] | None:
        """The same figures from the rollups only, or None when they cannot answer exactly."""
        _check(start, end)
        rolled = await self._rolled([(start, end)], group_by or Level.FLEET, scope)
        return None if rolled is None else _shaped(rolled[0], start, end, grouped=group_by is not None)

    async def series(
        self, windows: list[tuple[datetime, datetime]], *, scope: tuple[Level, str] | None = None
    ) -> list[Figures]:
        """The figures of each window (a trend's buckets) for `scope`: one statement over the
        rollups, or one raw computation per window when they cannot answer them all."""
        for start, end in windows:
            _check(start, end)
        rolled = await self._rolled(windows, Level.FLEET, scope)
        if rolled is None:
            return [(await self.compute_raw(s, e, scope=scope))[0] for s, e in windows]
        return [_shaped(rows, s, e, grouped=False)[0] for rows, (s, e) in zip(rolled, windows, strict=True)]

    async def _rolled(
        self, windows: list[tuple[datetime, datetime]], level: Level, scope: tuple[Level, str] | None
    ) -> list[list[dict[str, Any]]] | None:
        """Each window's rows from the rollups, or None when they cannot answer one of them."""
        if level not in rolled.ROLLED_LEVELS or (scope is not None and scope[0] not in rolled.ROLLED_LEVELS):
            return None
        # One snapshot for the clock and the rows: a rebuild or a seal between them cannot
        # change what the clock says the rows hold.
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(rolled.FOR_FIGURES)
            held = await rollups.clock(cur)
            if held is None or not held.answers(self._offset):
                return None
            now = datetime.now(tz=UTC)
            buckets = [rolled.plan(s, e, held, now) for s, e in windows]
            if any(b is None for b in buckets):
                return None
            hierarchy_only = level in rolled.SEALED_LEVELS and (scope is None or scope[0] in rolled.SEALED_LEVELS)
            sealed = held.sealed_through if hierarchy_only else None
            params: dict[str, Any] = {
                **rolled.bucket_params([b for b in buckets if b is not None], sealed),
                **self._groups(),
            }
            rows = await fetch_dicts(conn, rolled.compose(level, scope), params)
        out: list[list[dict[str, Any]]] = [[] for _ in windows]
        for row in rows:
            out[row["b"]].append(row)
        return out

    def _groups(self) -> dict[str, Any]:
        return {
            "fleet_offset": self._offset,
            "up": _states(UP_STATES),
            "failure": _states(FAILURE_STATES),
            "good": _states(GOOD_STATES),
            "deployed": _states(DEPLOYED_STATES),
            "delivered": sorted(HEARD),
        }

    async def compute_raw(
        self,
        start: datetime,
        end: datetime,
        *,
        scope: tuple[Level, str] | None = None,
        group_by: Level | None = None,
        device_days: bool = False,
    ) -> list[Figures]:
        """The figures from raw history (the state history, the daily rows, the deliveries):
        the definition, the test oracle of the rollups, and `haodian fleet recompute`'s check.
        With `device_days` the deliveries come from their device rows (`compute` decides when
        they hold them)."""
        _check(start, end)
        query = figures_query(group_by or Level.FLEET, scope, device_days=device_days)
        local = timedelta(minutes=self._offset)
        first_day = (start.astimezone(UTC) + local).date()
        last_day = (end.astimezone(UTC) + local - timedelta(microseconds=1)).date()
        params = {
            "start": start,
            "end": end,
            "first_day": first_day,
            "last_day": last_day,
            "days_from": datetime.combine(first_day, time(), tzinfo=UTC) - local,
            "days_to": datetime.combine(last_day + timedelta(days=1), time(), tzinfo=UTC) - local,
            **self._groups(),
        }
        rows = await fetch_dicts(self._pool, query, params)
        return _shaped(rows, start, end, grouped=group_by is not None)


def _local_midnight(at: datetime, local: timedelta) -> datetime:
    """The start of the local day (at the fleet's offset `local`) that `at` is in."""
    day = (at.astimezone(UTC) + local).date()
    return datetime.combine(day, time(), tzinfo=UTC) - local


def _check(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise FiguresError("window times need a time zone")
    if end <= start:
        raise FiguresError(f"empty window: {start.isoformat()} .. {end.isoformat()}")


def _shaped(rows: list[dict[str, Any]], start: datetime, end: datetime, *, grouped: bool) -> list[Figures]:
    if not grouped:
        return [figures_from_row(rows[0] if rows else _EMPTY_ROW, start, end, grouped=False)]
    return [figures_from_row(row, start, end, grouped=True) for row in rows]


class Recomputed(BaseModel):
    checkpoint: datetime
    seconds: float
    # The last 24 hours from a whole hour, from the rebuilt rollups and from raw history: equal.
    rolled: Figures
    raw: Figures


async def recompute(figures: FleetFigures, now: datetime) -> Recomputed:
    """Rebuild the rollups from raw history (the repair for anything that ever made them drift),
    and show the last 24 hours both ways."""
    started = perf_counter()
    at = await rollups.rebuild(figures.pool, now, fleet_offset_min=figures.fleet_utc_offset_min)
    seconds = perf_counter() - started
    window = (at - timedelta(hours=24), at)
    rolled_now = await figures.compute_rolled(*window)
    [raw] = await figures.compute_raw(*window)
    return Recomputed(checkpoint=at, seconds=seconds, rolled=rolled_now[0] if rolled_now else raw, raw=raw)


class StateCounts(BaseModel):
    at: datetime
    by_state: dict[str, int]
    deployed: int
    good: int
    intact_rate: float | None


async def state_counts(
    pool: AsyncConnectionPool, at: datetime, *, scope: tuple[Level, str] | None = None
) -> StateCounts:
    """Devices by state at the instant `at`: the point-in-time intact rate. From the devices'
    current states when `at` is now (a minute either way), else from history."""
    current = abs((datetime.now(tz=UTC) - at).total_seconds()) <= rolled.LIVE_GRACE.total_seconds()
    query = current_states_query(scope) if current else state_counts_query(scope)
    rows = await fetch_rows(pool, query, () if current else (at,))
    by_state = {state: int(n) for state, n in rows}
    deployed = sum(n for state, n in by_state.items() if state in DEPLOYED_STATES)
    good = sum(n for state, n in by_state.items() if state in GOOD_STATES)
    return StateCounts(at=at, by_state=by_state, deployed=deployed, good=good, intact_rate=_ratio(good, deployed))
