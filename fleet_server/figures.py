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
| OTA success | devices that committed the target / devices targeted (unreachable ones apart) |

The state groups (up, failure, good, deployed) are in `fleet_server.states`. A failure is an
entry into `faulty` from a state that is not already a failure state; a repair is the exit from
a failure run that began with a fault, into an up state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.registry import DEVICE_HIERARCHY
from fleet_server.states import DEPLOYED_STATES, FAILURE_STATES, GOOD_STATES, UP_STATES, DeviceState
from payment_bridge.store import DELIVERED


class Level(StrEnum):
    FLEET = "fleet"
    CITY = "city"
    DISTRICT = "district"
    STORE = "store"
    MERCHANT = "merchant"
    DEVICE = "device"
    MODEL = "model"
    FIRMWARE = "firmware"


# The column each level groups and filters by, over the scope join below.
_KEY: Final = {
    Level.FLEET: sql.SQL("'fleet'"),
    Level.CITY: sql.SQL("di.city_id"),
    Level.DISTRICT: sql.SQL("st.district_id"),
    Level.STORE: sql.SQL("st.store_id"),
    Level.MERCHANT: sql.SQL("b.merchant_id"),
    Level.DEVICE: sql.SQL("d.device_id"),
    Level.MODEL: sql.SQL("d.model"),
    Level.FIRMWARE: sql.SQL("d.firmware"),
}
# Levels a payment belongs to without a device: its merchant and the hierarchy above.
_MERCHANT_LEVELS: Final = {Level.FLEET, Level.CITY, Level.DISTRICT, Level.STORE, Level.MERCHANT}


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


_QUERY: Final = """
WITH scope AS (
    SELECT d.device_id, {key} AS key,
           -- float8 (date_part, not extract): numeric would be cast back inside every
           -- business_seconds() call, and numeric to float8 goes through text.
           date_part('epoch', COALESCE(m.business_open, time '08:00')) AS open_s,
           date_part('epoch', COALESCE(m.business_close, time '22:00')) AS close_s,
           60.0::float8 * COALESCE(m.utc_offset_min, %(fleet_offset)s) AS off_s
    FROM {hierarchy}
    WHERE {filter}
),
history AS (
    SELECT s.key, s.device_id, s.open_s, s.close_s, s.off_s, h.state, h.previous, h.at,
           lead(h.at) OVER w AS until,
           max(h.at) FILTER (WHERE h.state = ANY(%(failure)s) AND NOT COALESCE(h.previous = ANY(%(failure)s), false))
               OVER w AS run_at,
           max(h.at) FILTER (WHERE h.state = 'faulty' AND NOT COALESCE(h.previous = ANY(%(failure)s), false))
               OVER w AS fault_at
    FROM device_states h JOIN scope s USING (device_id)
    WHERE h.at < %(end)s
    WINDOW w AS (PARTITION BY h.device_id ORDER BY h.at, h.seq)
),
clipped AS (
    -- Interval ends as epoch seconds (float arithmetic from here on: no numeric, no intervals).
    SELECT key, device_id, state, open_s, close_s, off_s,
           date_part('epoch', GREATEST(at, %(start)s)) AS s,
           date_part('epoch', LEAST(COALESCE(until, 'infinity'), %(end)s)) AS e
    FROM history
    WHERE COALESCE(until, 'infinity') > %(start)s AND state = ANY(%(deployed)s)
),
per_device AS (
    -- Business time of an interval: its overlap with the merchant's hours (business_seconds()).
    SELECT key, device_id,
           sum(e - s) AS deployed_s,
           sum(e - s) FILTER (WHERE state = ANY(%(up)s)) AS up_s,
           sum(e - s) FILTER (WHERE state = ANY(%(failure)s)) AS failure_s,
           sum(e - s) FILTER (WHERE state = ANY(%(good)s)) AS good_s,
           sum(business_seconds(e, off_s, open_s, close_s) - business_seconds(s, off_s, open_s, close_s))
               AS b_expected_s,
           sum(business_seconds(e, off_s, open_s, close_s) - business_seconds(s, off_s, open_s, close_s))
               FILTER (WHERE state = ANY(%(up)s)) AS b_up_s
    FROM clipped GROUP BY key, device_id
),
times AS (
    SELECT key, count(*) AS devices, sum(deployed_s) AS deployed_s, sum(up_s) AS up_s,
           sum(failure_s) AS failure_s, sum(good_s) AS good_s,
           sum(b_expected_s) AS b_expected_s, sum(b_up_s) AS b_up_s
    FROM per_device GROUP BY key
),
failures AS (
    SELECT key, count(*) AS failures FROM history
    WHERE at >= %(start)s AND state = 'faulty' AND NOT COALESCE(previous = ANY(%(failure)s), false)
    GROUP BY key
),
repairs AS (
    SELECT key, count(*) AS repairs, avg(extract(epoch FROM at - fault_at)) AS mean_repair_s FROM history
    WHERE at >= %(start)s AND previous = ANY(%(failure)s) AND state = ANY(%(up)s) AND fault_at = run_at
    GROUP BY key
),
power AS (
    -- Device-days deployed (the fleet's local days, numbered from 1970-01-01, that a deployed
    -- interval touches) and which of them have a daily rollup row: one hash aggregation over
    -- both, no join.
    SELECT key, count(*) AS deployed_days, count(*) FILTER (WHERE seen) AS seen_days
    FROM (
        SELECT key, device_id, day, bool_or(seen) AS seen, bool_or(NOT seen) AS deployed
        FROM (
            SELECT c.key, c.device_id, g.day, false AS seen
            FROM clipped c, generate_series(floor((c.s + %(fleet_offset)s * 60.0) / 86400)::int,
                                            ceil((c.e + %(fleet_offset)s * 60.0) / 86400)::int - 1) AS g(day)
            UNION ALL
            SELECT s.key, r.device_id, r.day - date '1970-01-01', true
            FROM device_daily r JOIN scope s USING (device_id)
            WHERE r.day BETWEEN %(first_day)s AND %(last_day)s
        ) u
        GROUP BY key, device_id, day
    ) device_days
    WHERE deployed
    GROUP BY key
),
announced AS (
    SELECT key, count(*) AS announcements, count(*) FILTER (WHERE played) AS played,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
    FROM (
        SELECT s.key, dl.status = ANY(%(delivered)s) AS played,
               extract(epoch FROM dl.play_started_at - p.received_at) * 1000 AS latency_ms
        FROM deliveries dl JOIN payments p USING (payment_id) JOIN scope s ON s.device_id = dl.device_id
        WHERE p.received_at >= %(start)s AND p.received_at < %(end)s AND dl.status <> 'pending'
        UNION ALL
        -- A payment whose merchant had no bound device was never announced: missed.
        SELECT {merchant_key}, false, NULL
        FROM payments p
        LEFT JOIN merchants m ON m.merchant_id = p.merchant_id
        LEFT JOIN stores st ON st.store_id = m.store_id
        LEFT JOIN districts di ON di.district_id = st.district_id
        WHERE {unrouted} AND p.received_at >= %(start)s AND p.received_at < %(end)s
          AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.payment_id = p.payment_id)
    ) a GROUP BY key
),
ota AS (
    SELECT s.key, count(*) FILTER (WHERE o.state <> 'unreachable') AS targeted,
           count(*) FILTER (WHERE o.state = 'committed') AS reached,
           count(*) FILTER (WHERE o.state = 'unreachable') AS unreachable
    FROM ota_targets o JOIN scope s USING (device_id)
    WHERE o.targeted_at >= %(start)s AND o.targeted_at < %(end)s
    GROUP BY s.key
),
keys AS (
    SELECT key FROM times UNION SELECT key FROM announced UNION SELECT key FROM ota
)
SELECT k.key, COALESCE(t.devices, 0) AS devices,
       COALESCE(t.deployed_s, 0) AS deployed_s, COALESCE(t.up_s, 0) AS up_s,
       COALESCE(t.failure_s, 0) AS failure_s, COALESCE(t.good_s, 0) AS good_s,
       COALESCE(t.b_expected_s, 0) AS b_expected_s, COALESCE(t.b_up_s, 0) AS b_up_s,
       COALESCE(f.failures, 0) AS failures, COALESCE(r.repairs, 0) AS repairs, r.mean_repair_s,
       COALESCE(pw.deployed_days, 0) AS deployed_days, COALESCE(pw.seen_days, 0) AS seen_days,
       COALESCE(a.announcements, 0) AS announcements, COALESCE(a.played, 0) AS played, a.p50, a.p95,
       COALESCE(o.targeted, 0) AS ota_targeted, COALESCE(o.reached, 0) AS ota_reached,
       COALESCE(o.unreachable, 0) AS ota_unreachable
FROM keys k
LEFT JOIN times t USING (key) LEFT JOIN failures f USING (key)
LEFT JOIN repairs r USING (key) LEFT JOIN power pw USING (key) LEFT JOIN announced a USING (key)
LEFT JOIN ota o USING (key)
ORDER BY k.key
"""


# What the query gives for a scope with no devices and no payments at all.
_EMPTY_ROW: Final[dict[str, Any]] = {
    **dict.fromkeys(
        ("devices", "deployed_s", "up_s", "failure_s", "good_s", "b_expected_s", "b_up_s", "failures", "repairs"),
        0,
    ),
    **dict.fromkeys(("deployed_days", "seen_days", "announcements", "played"), 0),
    **dict.fromkeys(("ota_targeted", "ota_reached", "ota_unreachable"), 0),
    **dict.fromkeys(("key", "mean_repair_s", "p50", "p95")),
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
        latency_p50_ms=row["p50"],
        latency_p95_ms=row["p95"],
        ota_targeted=row["ota_targeted"],
        ota_reached=row["ota_reached"],
        ota_unreachable=row["ota_unreachable"],
        ota_success_rate=_ratio(row["ota_reached"], row["ota_targeted"]),
    )


class FiguresError(ValueError):
    """A figures request that cannot be answered: an empty window, a level that cannot slice."""


class FleetFigures:
    def __init__(self, pool: AsyncConnectionPool, *, fleet_utc_offset_min: int = 480) -> None:
        self._pool = pool
        self._offset = fleet_utc_offset_min

    @property
    def fleet_utc_offset_min(self) -> int:
        return self._offset

    async def compute(
        self,
        start: datetime,
        end: datetime,
        *,
        scope: tuple[Level, str] | None = None,
        group_by: Level | None = None,
    ) -> list[Figures]:
        """Figures over [start, end) for the devices in `scope` (all when None), one row per
        `group_by` key (one row for the whole scope when None)."""
        if start.tzinfo is None or end.tzinfo is None:
            raise FiguresError("window times need a time zone")
        if end <= start:
            raise FiguresError(f"empty window: {start.isoformat()} .. {end.isoformat()}")
        level = group_by or Level.FLEET
        payment_filter: sql.Composable = sql.SQL("true")
        if scope is not None:
            payment_filter = (
                sql.SQL("{} = {}").format(_payment_key(scope[0]), sql.Literal(scope[1]))
                if scope[0] in _MERCHANT_LEVELS
                else sql.SQL("false")
            )
        unrouted = payment_filter if level in _MERCHANT_LEVELS else sql.SQL("false")
        query = sql.SQL(_QUERY).format(
            key=_KEY[level],
            hierarchy=sql.SQL(DEVICE_HIERARCHY),
            filter=_scope_filter(scope),
            merchant_key=_payment_key(level) if level in _MERCHANT_LEVELS else sql.SQL("NULL"),
            unrouted=unrouted,
        )
        local = timedelta(minutes=self._offset)
        params = {
            "start": start,
            "end": end,
            "fleet_offset": self._offset,
            "first_day": (start.astimezone(UTC) + local).date(),
            "last_day": (end.astimezone(UTC) + local - timedelta(microseconds=1)).date(),
            "up": _states(UP_STATES),
            "failure": _states(FAILURE_STATES),
            "good": _states(GOOD_STATES),
            "deployed": _states(DEPLOYED_STATES),
            "delivered": list(DELIVERED),
        }
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            rows = await cur.fetchall()
        if group_by is None:
            row = rows[0] if rows else _EMPTY_ROW
            return [figures_from_row(row, start, end, grouped=False)]
        return [figures_from_row(row, start, end, grouped=True) for row in rows]


class StateCounts(BaseModel):
    at: datetime
    by_state: dict[str, int]
    deployed: int
    good: int
    intact_rate: float | None


async def state_counts(
    pool: AsyncConnectionPool, at: datetime, *, scope: tuple[Level, str] | None = None
) -> StateCounts:
    """Devices by state at the instant `at`, from history: the point-in-time intact rate."""
    query = sql.SQL(
        "SELECT state, count(*) FROM ("
        " SELECT DISTINCT ON (h.device_id) h.state FROM device_states h"
        " JOIN ({hierarchy}) ON d.device_id = h.device_id"
        " WHERE h.at <= %s AND {filter} ORDER BY h.device_id, h.at DESC, h.seq DESC"
        ") s GROUP BY state"
    ).format(hierarchy=sql.SQL(DEVICE_HIERARCHY), filter=_scope_filter(scope))
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.execute(query, (at,))
        by_state = {row[0]: int(row[1]) for row in await cur.fetchall()}
    deployed = sum(n for state, n in by_state.items() if state in DEPLOYED_STATES)
    good = sum(n for state, n in by_state.items() if state in GOOD_STATES)
    return StateCounts(at=at, by_state=by_state, deployed=deployed, good=good, intact_rate=_ratio(good, deployed))


def _scope_filter(scope: tuple[Level, str] | None) -> sql.Composable:
    """The WHERE condition over DEVICE_HIERARCHY selecting the devices in `scope`."""
    return sql.SQL("true") if scope is None else sql.SQL("{} = {}").format(_KEY[scope[0]], sql.Literal(scope[1]))


def _payment_key(level: Level) -> sql.Composable:
    """The level's column for a payment joined to its merchant (no device): the device's
    column, except that the merchant is the payment's own."""
    return sql.SQL("p.merchant_id") if level is Level.MERCHANT else _KEY[level]
