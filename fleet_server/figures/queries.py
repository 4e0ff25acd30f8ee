"""The SQL of the figures: one statement over the state history, the daily rollup, the
deliveries and the OTA targets, grouped by any level, and the devices by state at an instant.

Both are `psycopg.sql` templates: the level's key and the scope's filter are composed in by
`figures_query` and `state_counts_query`; the state and status names come from their enums.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from psycopg import sql

from fleet_server.db.hierarchy import DEVICE_HIERARCHY
from fleet_server.devices.states import DeviceState
from fleet_server.figures import latency


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

# The delivery and OTA target states the figures name (deliveries: the bridge's table; OTA
# targets: fleet_server.ota.policy).
_PENDING_DELIVERY: Final = "pending"
_OTA_COMMITTED: Final = "committed"
_OTA_UNREACHABLE: Final = "unreachable"

# The figures over [start, end) for the devices in a scope, one row per key of the level: the
# sums DESIGN.md's figures are ratios of (device-seconds by state group, business seconds,
# failures, repairs, device-days, announcements, OTA targets). Parameters: start, end,
# fleet_offset, first_day, last_day, and the state groups up, failure, good, deployed, delivered.
FIGURES: Final = """
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
           max(h.at) FILTER (WHERE h.state = {faulty} AND NOT COALESCE(h.previous = ANY(%(failure)s), false))
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
    WHERE at >= %(start)s AND state = {faulty} AND NOT COALESCE(previous = ANY(%(failure)s), false)
    GROUP BY key
),
repairs AS (
    SELECT key, count(*) AS repairs, avg(extract(epoch FROM at - fault_at)) AS mean_repair_s FROM history
    WHERE at >= %(start)s AND previous = ANY(%(failure)s) AND state = ANY(%(up)s) AND fault_at = run_at
    GROUP BY key
),
power_history AS (
    SELECT s.key, s.device_id, h.state, h.at, lead(h.at) OVER w AS until
    FROM device_states h JOIN scope s USING (device_id)
    WHERE h.at < %(days_to)s
    WINDOW w AS (PARTITION BY h.device_id ORDER BY h.at, h.seq)
),
power AS (
    -- Device-days deployed (the fleet's local days, numbered from 1970-01-01, of the window's
    -- local days [days_from, days_to) that a deployed interval touches, at any time of the day)
    -- and which of them have a daily rollup row: one hash aggregation over both, no join.
    SELECT key, count(*) AS deployed_days, count(*) FILTER (WHERE seen) AS seen_days
    FROM (
        SELECT key, device_id, day, bool_or(seen) AS seen, bool_or(NOT seen) AS deployed
        FROM (
            SELECT h.key, h.device_id, g.day, false AS seen
            FROM power_history h, generate_series(
                floor((date_part('epoch', GREATEST(h.at, %(days_from)s)) + %(fleet_offset)s * 60.0) / 86400)::int,
                ceil((date_part('epoch', LEAST(COALESCE(h.until, 'infinity'), %(days_to)s))
                      + %(fleet_offset)s * 60.0) / 86400)::int - 1) AS g(day)
            WHERE COALESCE(h.until, 'infinity') > %(days_from)s AND COALESCE(h.until, 'infinity') > h.at
              AND h.state = ANY(%(deployed)s)
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
{announced}
ota AS (
    SELECT s.key, count(*) FILTER (WHERE o.state <> {unreachable}) AS targeted,
           count(*) FILTER (WHERE o.state = {committed}) AS reached,
           count(*) FILTER (WHERE o.state = {unreachable}) AS unreachable
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
       COALESCE(a.announcements, 0) AS announcements, COALESCE(a.played, 0) AS played, a.lat,
       COALESCE(o.targeted, 0) AS ota_targeted, COALESCE(o.reached, 0) AS ota_reached,
       COALESCE(o.unreachable, 0) AS ota_unreachable
FROM keys k
LEFT JOIN times t USING (key) LEFT JOIN failures f USING (key)
LEFT JOIN repairs r USING (key) LEFT JOIN power pw USING (key) LEFT JOIN announced a USING (key)
LEFT JOIN ota o USING (key)
ORDER BY k.key
"""

# The deliveries part of FIGURES: raw (the definition), or from the device rows (migration
# 0017) when the window is made of whole local days, the last one possibly live, and no payment
# announced to nobody belongs to the level (`announced_by_device_days`).
_ANNOUNCED_RAW: Final = """announced AS (
    SELECT key, count(*) AS announcements, count(*) FILTER (WHERE played) AS played, {lat_counts} AS lat
    FROM (
        SELECT s.key, dl.status = ANY(%(delivered)s) AS played,
               latency_bucket(dl.play_started_at, p.received_at) AS lb
        FROM deliveries dl JOIN payments p USING (payment_id) JOIN scope s ON s.device_id = dl.device_id
        WHERE p.received_at >= %(start)s AND p.received_at < %(end)s AND dl.status <> {pending}
          AND p.kind IN ('payment', 'refund')
        UNION ALL
        -- A payment whose merchant had no bound device was never announced: missed.
        SELECT {merchant_key}, false, NULL
        FROM payments p
        LEFT JOIN merchants m ON m.merchant_id = p.merchant_id
        LEFT JOIN stores st ON st.store_id = m.store_id
        LEFT JOIN districts di ON di.district_id = st.district_id
        WHERE {unrouted} AND p.received_at >= %(start)s AND p.received_at < %(end)s
          AND p.kind IN ('payment', 'refund')
          AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.payment_id = p.payment_id)
    ) a GROUP BY key
),
"""
_ANNOUNCED_BY_DEVICE_DAY: Final = """announced AS (
    SELECT s.key, sum(r.announcements) AS announcements, sum(r.played) AS played, {lat_sums} AS lat
    FROM delivery_device_days r JOIN scope s USING (device_id)
    WHERE r.day BETWEEN %(first_day)s AND %(last_day)s
    GROUP BY s.key HAVING sum(r.announcements) <> 0
),"""


# The tail of the rollup statement (`rolled.ROLLED`): the deliveries of each bucket b from their
# rollups (migration 0015; sealed days by store, 0016), its OTA targets read raw (one per device and release), and every
# bucket's row per key. Its parts are `announced_parts()`.
ANNOUNCED_AND_OTA: Final = """
announced AS (
    SELECT b, key, sum(announcements) AS announcements, sum(played) AS played, {lat_sums} AS lat
    FROM (
        SELECT hp.b, {akey} AS key, r.announcements, r.played, {lat_columns}
        FROM delivery_hours r JOIN hp ON r.hour >= hp.f AND r.hour < hp.t
        LEFT JOIN stores st ON st.store_id = NULLIF(r.store_id, '')
        LEFT JOIN districts di ON di.district_id = st.district_id
        WHERE {afilter}
        UNION ALL
        SELECT dp.b, {akey}, r.announcements, r.played, {lat_columns}
        FROM delivery_days r JOIN dp ON r.day BETWEEN dp.f AND dp.t
        LEFT JOIN stores st ON st.store_id = NULLIF(r.store_id, '')
        LEFT JOIN districts di ON di.district_id = st.district_id
        WHERE {afilter}
        UNION ALL
        SELECT zp.b, {akey}, r.announcements, r.played, {lat_columns}
        FROM (SELECT *, '' AS model, '' AS firmware FROM delivery_store_days) r JOIN zp ON r.day BETWEEN zp.f AND zp.t
        LEFT JOIN stores st ON st.store_id = NULLIF(r.store_id, '')
        LEFT JOIN districts di ON di.district_id = st.district_id
        WHERE {afilter}
        UNION ALL
        -- Payments announced to nobody: missed, under their merchant's store.
        SELECT u.b, {merchant_key}, u.payments, 0, {no_lat}
        FROM (
            SELECT hp.b, r.merchant_id, r.payments FROM unrouted_hours r JOIN hp ON r.hour >= hp.f AND r.hour < hp.t
            UNION ALL
            SELECT dp.b, r.merchant_id, r.payments FROM unrouted_days r JOIN dp ON r.day BETWEEN dp.f AND dp.t
            UNION ALL
            SELECT zp.b, r.merchant_id, r.payments FROM unrouted_days r JOIN zp ON r.day BETWEEN zp.f AND zp.t
        ) u
        LEFT JOIN merchants m ON m.merchant_id = NULLIF(u.merchant_id, '')
        LEFT JOIN stores st ON st.store_id = m.store_id
        LEFT JOIN districts di ON di.district_id = st.district_id
        WHERE {unrouted}
    ) a GROUP BY 1, 2
    HAVING sum(announcements) <> 0  -- rows moved or settled away leave zeros behind
),
ota AS (
    SELECT bk.b, {okey} AS key, count(*) FILTER (WHERE o.state <> {unreachable}) AS targeted,
           count(*) FILTER (WHERE o.state = {committed}) AS reached,
           count(*) FILTER (WHERE o.state = {unreachable}) AS unreachable
    FROM ota_targets o JOIN ({hierarchy}) ON d.device_id = o.device_id
    JOIN buckets bk ON o.targeted_at >= bk.s AND o.targeted_at < bk.e
    WHERE {ofilter}
    GROUP BY 1, 2
),
keys AS (
    SELECT b, key FROM deployed WHERE devices > 0 UNION SELECT b, key FROM announced UNION SELECT b, key FROM ota
)
SELECT k.b, k.key, COALESCE(dv.devices, 0) AS devices,
       COALESCE(t.deployed_s, 0) AS deployed_s, COALESCE(t.up_s, 0) AS up_s,
       COALESCE(t.failure_s, 0) AS failure_s, COALESCE(t.good_s, 0) AS good_s,
       COALESCE(t.b_expected_s, 0) AS b_expected_s, COALESCE(t.b_up_s, 0) AS b_up_s,
       COALESCE(t.failures, 0) AS failures, COALESCE(t.repairs, 0) AS repairs,
       CASE WHEN t.repairs > 0 THEN t.repair_s / t.repairs END AS mean_repair_s,
       COALESCE(dv.deployed_days, 0) AS deployed_days, COALESCE(t.seen_days, 0) AS seen_days,
       COALESCE(a.announcements, 0) AS announcements, COALESCE(a.played, 0) AS played, a.lat,
       COALESCE(o.targeted, 0) AS ota_targeted, COALESCE(o.reached, 0) AS ota_reached,
       COALESCE(o.unreachable, 0) AS ota_unreachable
FROM keys k
LEFT JOIN times t USING (b, key) LEFT JOIN deployed dv USING (b, key)
LEFT JOIN announced a USING (b, key) LEFT JOIN ota o USING (b, key)
ORDER BY k.b, k.key
"""


def announced_parts(
    level: Level, scope: tuple[Level, str] | None, key: sql.Composable, row_filter: sql.Composable
) -> dict[str, sql.Composable]:
    """The parts ANNOUNCED_AND_OTA is composed with for one level and scope: `key` and
    `row_filter` over rollup rows r (stores st, districts di)."""
    return {
        "akey": key,
        "afilter": row_filter,
        "okey": _KEY[level],
        "ofilter": _scope_filter(scope),
        "lat_sums": sql.SQL(latency.summed_sql("a")),
        "lat_columns": sql.SQL(", ".join(f"r.{c}" for c in latency.COLUMNS)),
        "no_lat": sql.SQL(", ".join("0" for _ in latency.COLUMNS)),
        "merchant_key": _payment_key(level) if level in _MERCHANT_LEVELS else sql.SQL("NULL"),
        "unrouted": _unrouted(level, scope),
        "pending": sql.Literal(_PENDING_DELIVERY),
        "committed": sql.Literal(_OTA_COMMITTED),
        "unreachable": sql.Literal(_OTA_UNREACHABLE),
    }


def _unrouted(level: Level, scope: tuple[Level, str] | None) -> sql.Composable:
    """Which payments with no delivery count as missed: at merchant levels only, in scope."""
    if level not in _MERCHANT_LEVELS:
        return sql.SQL("false")
    if scope is None:
        return sql.SQL("true")
    if scope[0] not in _MERCHANT_LEVELS:
        return sql.SQL("false")
    return sql.SQL("{} = {}").format(_payment_key(scope[0]), sql.Literal(scope[1]))


def announced_by_device_days(level: Level, scope: tuple[Level, str] | None) -> bool:
    """Whether the device rows hold every delivery figure of the level and scope: no payment
    announced to nobody counts there."""
    return level not in _MERCHANT_LEVELS or (scope is not None and scope[0] not in _MERCHANT_LEVELS)


def figures_query(level: Level, scope: tuple[Level, str] | None, *, device_days: bool = False) -> sql.Composed:
    """FIGURES for one level and scope, the deliveries raw or (`device_days`) from the device rows."""
    announced = _ANNOUNCED_BY_DEVICE_DAY if device_days else _ANNOUNCED_RAW
    return sql.SQL(FIGURES.replace("{announced}", announced)).format(
        lat_sums=sql.SQL(latency.summed_sql("r")),
        key=_KEY[level],
        hierarchy=sql.SQL(DEVICE_HIERARCHY),
        filter=_scope_filter(scope),
        merchant_key=_payment_key(level) if level in _MERCHANT_LEVELS else sql.SQL("NULL"),
        unrouted=_unrouted(level, scope),
        lat_counts=sql.SQL(latency.counted_sql("lb")),
        faulty=sql.Literal(DeviceState.FAULTY.value),
        pending=sql.Literal(_PENDING_DELIVERY),
        committed=sql.Literal(_OTA_COMMITTED),
        unreachable=sql.Literal(_OTA_UNREACHABLE),
    )


# Devices by state at one instant (the last transition at or before it): (state, count).
_STATE_COUNTS: Final = (
    "SELECT state, count(*) FROM ("
    " SELECT DISTINCT ON (h.device_id) h.state FROM device_states h"
    " JOIN ({hierarchy}) ON d.device_id = h.device_id"
    " WHERE h.at <= %s AND {filter} ORDER BY h.device_id, h.at DESC, h.seq DESC"
    ") s GROUP BY state"
)


# Devices by the state they are in now (the tracker keeps it with the history): (state, count).
_CURRENT_STATES: Final = (
    "SELECT d.state, count(*) FROM {hierarchy} WHERE d.state IS NOT NULL AND {filter} GROUP BY d.state"
)


def current_states_query(scope: tuple[Level, str] | None) -> sql.Composed:
    hierarchy = sql.SQL("devices d" if scope is None else DEVICE_HIERARCHY)
    return sql.SQL(_CURRENT_STATES).format(hierarchy=hierarchy, filter=_scope_filter(scope))


def state_counts_query(scope: tuple[Level, str] | None) -> sql.Composed:
    return sql.SQL(_STATE_COUNTS).format(hierarchy=sql.SQL(DEVICE_HIERARCHY), filter=_scope_filter(scope))


def _scope_filter(scope: tuple[Level, str] | None) -> sql.Composable:
    """The WHERE condition over DEVICE_HIERARCHY selecting the devices in `scope`."""
    return sql.SQL("true") if scope is None else sql.SQL("{} = {}").format(_KEY[scope[0]], sql.Literal(scope[1]))


def _payment_key(level: Level) -> sql.Composable:
    """The level's column for a payment joined to its merchant (no device): the device's
    column, except that the merchant is the payment's own."""
    return sql.SQL("p.merchant_id") if level is Level.MERCHANT else _KEY[level]
