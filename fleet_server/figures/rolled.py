"""The figures from the rollups (fleet_server/devices/rollups.py): the same sums as the raw
query (`queries.FIGURES`), read from the day and hour rows, the open sums and the devices'
deployed spans, for many windows (buckets) in one statement.

A window is served here when the rollups can answer it exactly: it starts on a whole hour no
later than the checkpoint, and ends on a whole hour no later than the checkpoint or now (a live
window: the open sums carry it to its end); its hour parts are within the hours kept; the level
and the scope are slices the rows hold (fleet, city, district, store, model, firmware). Anything
else is computed from raw history. Deliveries come from their own rollups (migration 0015,
`fleet_server.devices.delivery_rollups`), kept exact at every moment by the bridge's writes: a
live window's deliveries run to the moment of the query. OTA targets are read raw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from psycopg import sql

from fleet_server.db.hierarchy import DEVICE_HIERARCHY
from fleet_server.devices.ledger import DAY_S, HOUR_S, day_start, local_day
from fleet_server.devices.rollup_queries import NOT_RETIRED
from fleet_server.devices.rollups import Clock
from fleet_server.figures.queries import ANNOUNCED_AND_OTA, Level, announced_parts

# The levels the rollup rows hold, and each one's column over them (rows r, stores st, districts di).
ROLLED_LEVELS: Final = {
    Level.FLEET: sql.SQL("'fleet'"),
    Level.CITY: sql.SQL("di.city_id"),
    Level.DISTRICT: sql.SQL("st.district_id"),
    Level.STORE: sql.SQL("st.store_id"),
    Level.MODEL: sql.SQL("NULLIF(r.model, '')"),
    Level.FIRMWARE: sql.SQL("NULLIF(r.firmware, '')"),
}
# The levels whose rows may come from the sealed days' store rows (migration 0016): those of
# the hierarchy, which a store's rows hold.
SEALED_LEVELS: Final = frozenset({Level.FLEET, Level.CITY, Level.DISTRICT, Level.STORE})
# The first statement of the figures' transaction: one snapshot for the clock and the rows; the
# statement is planned expensive, and compiling it (JIT) costs more than running it; its
# aggregations want more than the default work_mem to hash instead of sorting on disk.
FOR_FIGURES: Final = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"
)
# A window whose end is at most this much before now is live: the open sums carry it to its end.
LIVE_GRACE: Final = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    end: datetime
    live: bool
    first_day: date
    last_day: date
    hours: tuple[tuple[datetime, datetime], ...]  # hour rows [from, to)
    days: tuple[date, date] | None  # day rows, inclusive
    # The local days the window touches that its day rows do not cover: their seen devices only.
    seen_only: tuple[tuple[date, date], ...] = ()


def plan(start: datetime, end: datetime, held: Clock, now: datetime) -> Bucket | None:
    """How the rollups answer [start, end), or None when they cannot exactly."""
    s, e, c = start.timestamp(), end.timestamp(), held.checkpoint
    offset_s = 60.0 * held.offset_min
    if held.offset_min % 60 or s % HOUR_S or s > c or e <= s:
        return None
    live = end >= now - LIVE_GRACE
    if not live and (e % HOUR_S or e > c):
        return None
    hours: list[tuple[float, float]] = []
    days: tuple[date, date] | None = None
    at = s
    first_full = day_start(local_day(s, offset_s), offset_s)
    if first_full < s:
        upto = min(first_full + DAY_S, e)
        hours.append((at, upto))
        at = upto
    if at < e:
        if live:
            days = (local_day(at, offset_s), local_day(max(e, now.timestamp()) - 1e-6, offset_s))
        else:
            last_full = day_start(local_day(e, offset_s), offset_s)
            if at < last_full:
                days = (local_day(at, offset_s), local_day(last_full - 1, offset_s))
                at = last_full
            if at < e:
                hours.append((at, e))
    if any(a < held.hours_from for a, _ in hours):
        return None
    first_day, last_day = local_day(s, offset_s), local_day(math.nextafter(e, -math.inf), offset_s)
    seen_only: tuple[tuple[date, date], ...]
    if days is None:
        seen_only = ((first_day, last_day),)
    else:
        before = (first_day, days[0] - timedelta(days=1)) if first_day < days[0] else None
        after = (days[1] + timedelta(days=1), last_day) if last_day > days[1] else None
        seen_only = tuple(r for r in (before, after) if r is not None)
    return Bucket(
        start=start,
        end=end,
        live=live,
        first_day=first_day,
        last_day=last_day,
        hours=tuple((_utc(a), _utc(b)) for a, b in hours),
        days=days,
        seen_only=seen_only,
    )


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


# The figures of each bucket (b) and key, from the rollups. Parameters: the buckets (b, b_start,
# b_end, b_live, b_first, b_last), their hour parts (hb, hf, ht), day parts (db, df, dt), sealed
# day parts read by store (zb, zf, zt) and days read for their seen devices only (sb, sf, st), the
# state groups (deployed, up, failure, good, delivered), fleet_offset; {key}, {filter} over the
# rows r (day and hour rows, open sums, deployed spans) with stores st and districts di.
ROLLED: Final = """
WITH buckets AS (
    SELECT *, first_day::timestamp AT TIME ZONE 'UTC' - make_interval(mins => %(fleet_offset)s) AS days_from,
           (last_day + 1)::timestamp AT TIME ZONE 'UTC' - make_interval(mins => %(fleet_offset)s) AS days_to
    FROM unnest(%(b)s::int[], %(b_start)s::timestamptz[], %(b_end)s::timestamptz[], %(b_live)s::bool[],
                %(b_first)s::date[], %(b_last)s::date[]) AS b(b, s, e, live, first_day, last_day)
),
hp AS (SELECT * FROM unnest(%(hb)s::int[], %(hf)s::timestamptz[], %(ht)s::timestamptz[]) AS x(b, f, t)),
dp AS (SELECT * FROM unnest(%(db)s::int[], %(df)s::date[], %(dt)s::date[]) AS x(b, f, t)),
sp AS (SELECT * FROM unnest(%(sb)s::int[], %(sf)s::date[], %(st)s::date[]) AS x(b, f, t)),
zp AS (SELECT * FROM unnest(%(zb)s::int[], %(zf)s::date[], %(zt)s::date[]) AS x(b, f, t)),
parts AS (
    SELECT hp.b, r.store_id, r.model, r.firmware, r.deployed_s, r.up_s, r.failure_s, r.good_s, r.b_expected_s,
           r.b_up_s, r.failures, r.repairs, r.repair_s, 0 AS seen
    FROM figure_hours r JOIN hp ON r.hour >= hp.f AND r.hour < hp.t
    UNION ALL
    SELECT dp.b, r.store_id, r.model, r.firmware, r.deployed_s, r.up_s, r.failure_s, r.good_s, r.b_expected_s,
           r.b_up_s, r.failures, r.repairs, r.repair_s, r.seen_devices
    FROM figure_days r JOIN dp ON r.day BETWEEN dp.f AND dp.t
    UNION ALL
    SELECT zp.b, r.store_id, '', '', r.deployed_s, r.up_s, r.failure_s, r.good_s, r.b_expected_s,
           r.b_up_s, r.failures, r.repairs, r.repair_s, r.seen_devices
    FROM figure_store_days r JOIN zp ON r.day BETWEEN zp.f AND zp.t
    UNION ALL
    SELECT b.b, o.store_id, o.model, o.firmware,
           CASE WHEN o.state = ANY(%(deployed)s) THEN o.devices * date_part('epoch', b.e) - o.since_s ELSE 0 END,
           CASE WHEN o.state = ANY(%(up)s) THEN o.devices * date_part('epoch', b.e) - o.since_s ELSE 0 END,
           CASE WHEN o.state = ANY(%(failure)s) THEN o.devices * date_part('epoch', b.e) - o.since_s ELSE 0 END,
           CASE WHEN o.state = ANY(%(good)s) THEN o.devices * date_part('epoch', b.e) - o.since_s ELSE 0 END,
           CASE WHEN o.state = ANY(%(deployed)s)
                THEN o.devices * business_seconds(date_part('epoch', b.e), o.off_s, o.open_s, o.close_s) - o.since_bs
                ELSE 0 END,
           CASE WHEN o.state = ANY(%(up)s)
                THEN o.devices * business_seconds(date_part('epoch', b.e), o.off_s, o.open_s, o.close_s) - o.since_bs
                ELSE 0 END,
           0, 0, 0, 0
    FROM figure_open o JOIN buckets b ON b.live
    UNION ALL
    -- The seen devices of the bucket's local days its day rows above do not cover.
    SELECT sp.b, r.store_id, r.model, r.firmware, 0, 0, 0, 0, 0, 0, 0, 0, 0, r.seen_devices
    FROM sp JOIN figure_days r ON r.day BETWEEN sp.f AND sp.t
    WHERE r.seen_devices <> 0
),
times AS (
    SELECT r.b, {key} AS key, sum(r.deployed_s) AS deployed_s, sum(r.up_s) AS up_s, sum(r.failure_s) AS failure_s,
           sum(r.good_s) AS good_s, sum(r.b_expected_s) AS b_expected_s, sum(r.b_up_s) AS b_up_s,
           sum(r.failures) AS failures, sum(r.repairs) AS repairs, sum(r.repair_s) AS repair_s,
           sum(r.seen) AS seen_days
    FROM parts r LEFT JOIN stores st ON st.store_id = NULLIF(r.store_id, '')
    LEFT JOIN districts di ON di.district_id = st.district_id
    WHERE {filter}
    GROUP BY 1, 2
),
spans AS (
    SELECT {key} AS key, r.deployed_at AS h, NULLIF(r.retired_at, {not_retired}) AS r, sum(r.devices) AS n
    FROM figure_spans r LEFT JOIN stores st ON st.store_id = NULLIF(r.store_id, '')
    LEFT JOIN districts di ON di.district_id = st.district_id
    WHERE r.devices <> 0 AND {filter}
    GROUP BY 1, 2, 3
),
deployed AS (
    -- Devices deployed in the bucket, and device-days deployed over its local days (at any
    -- time of the day: the power-on rate's days). A gap between two spans of a device
    -- (rollup_queries.REBUILD_SPANS, n -1) counts the days both touch: none, or the one day.
    SELECT b.b, spans.key,
           COALESCE(sum(n) FILTER (WHERE spans.h < b.e AND (spans.r IS NULL OR spans.r > b.s)), 0) AS devices,
           sum(n * GREATEST(0, 1 + LEAST(b.last_day, COALESCE(
                   date '1970-01-01' + floor((date_part('epoch', spans.r) - 1 + %(fleet_offset)s * 60.0) / 86400)::int,
                   b.last_day))
                 - GREATEST(b.first_day,
                   date '1970-01-01' + floor((date_part('epoch', spans.h) + %(fleet_offset)s * 60.0) / 86400)::int)))
               AS deployed_days
    FROM spans JOIN buckets b ON spans.h < b.days_to AND (spans.r IS NULL OR spans.r > b.days_from)
    GROUP BY 1, 2
),
"""


def compose(level: Level, scope: tuple[Level, str] | None) -> sql.Composed:
    """ROLLED and the deliveries and OTA parts for one level and scope (both must be rolled levels)."""
    row_filter: sql.Composable = sql.SQL("true")
    if scope is not None:
        row_filter = sql.SQL("{} = {}").format(ROLLED_LEVELS[scope[0]], sql.Literal(scope[1]))
    announced = announced_parts(level, scope, ROLLED_LEVELS[level], row_filter)
    return sql.SQL(ROLLED + ANNOUNCED_AND_OTA).format(
        key=ROLLED_LEVELS[level],
        filter=row_filter,
        not_retired=sql.SQL(NOT_RETIRED),
        hierarchy=sql.SQL(DEVICE_HIERARCHY),
        **announced,
    )


def bucket_params(buckets: list[Bucket], sealed: date | None = None) -> dict[str, list[object]]:
    """The statement's parameters for `buckets`: their day parts up to the `sealed` day (None:
    none may be) read from the store rows (migration 0016), the rest from the day rows."""
    out: dict[str, list[object]] = {k: [] for k in ("b", "b_start", "b_end", "b_live", "b_first", "b_last")}
    out |= {k: [] for k in ("hb", "hf", "ht", "db", "df", "dt", "zb", "zf", "zt", "sb", "sf", "st")}
    for i, bucket in enumerate(buckets):
        for k, v in zip(
            ("b", "b_start", "b_end", "b_live", "b_first", "b_last"),
            (i, bucket.start, bucket.end, bucket.live, bucket.first_day, bucket.last_day),
            strict=True,
        ):
            out[k].append(v)
        for f, t in bucket.hours:
            out["hb"].append(i)
            out["hf"].append(f)
            out["ht"].append(t)
        if bucket.days is not None:
            first, last = bucket.days
            if sealed is not None and first <= sealed:
                out["zb"].append(i)
                out["zf"].append(first)
                out["zt"].append(min(last, sealed))
                first = sealed + timedelta(days=1)
            if first <= last:
                out["db"].append(i)
                out["df"].append(first)
                out["dt"].append(last)
        for first, last in bucket.seen_only:
            out["sb"].append(i)
            out["sf"].append(first)
            out["st"].append(last)
    return out
