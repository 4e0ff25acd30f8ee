"""The SQL of the figure rollups (migration 0014, `rollups.py`): the state tracker's additions,
the hourly checkpoint, the rebuild from raw history, the devices to move to a new slice, and
the power-on counts. State names come from their enums; every statement that writes the rows
or the open sums runs under the rollup lock (`rollups.py`).

Slices are the device's store (the one its figures group under: its merchant's, else its own),
model and firmware, '' for none; business hours its merchant's, else 08:00-22:00 at the
fleet's offset, as the raw figures take them.
"""

from __future__ import annotations

from typing import Final, LiteralString

from fleet_server.db.fetch import statement
from fleet_server.db.hierarchy import DEVICE_HIERARCHY
from fleet_server.devices.spans import SPANS
from fleet_server.devices.states import DEPLOYED_STATES, FAILURE_STATES, UP_STATES, DeviceState

_NAMES: Final = {
    "deployed": DEPLOYED_STATES,
    "up": UP_STATES,
    "failure": FAILURE_STATES,
    "good": frozenset({DeviceState.IN_SERVICE, DeviceState.IDLE, DeviceState.OFFLINE}),
    "faulty": DeviceState.FAULTY,
    "retired": DeviceState.RETIRED,
}

# The slice and business hours of every device now, over DEVICE_HIERARCHY. Parameter: fleet_offset.
SLICE_KEY: Final = (
    "COALESCE(st.store_id, '') AS store, COALESCE(d.model, '') AS model, COALESCE(d.firmware, '') AS firmware"
)
SLICE_NOW: Final = (
    SLICE_KEY + ","
    " 60.0::float8 * COALESCE(m.utc_offset_min, %(fleet_offset)s) AS off_s,"
    " date_part('epoch', COALESCE(m.business_open, time '08:00')) AS open_s,"
    " date_part('epoch', COALESCE(m.business_close, time '22:00')) AS close_s"
)

CLOCK: Final = (
    "SELECT checkpoint_at, hours_from, offset_min, dirty_from, deliveries_offset_min, sealed_through FROM figure_clock"
)
# The local days up to a day summed by store (migration 0016): how many were; none, before a rebuild.
SEAL: Final = "SELECT seal_days(%s)"
UNSEAL: Final = "SELECT unseal_days()"
MARK_DIRTY: Final = "UPDATE figure_clock SET dirty_from = LEAST(dirty_from, %s)"

# The sums of one piece of time in a state, over columns s, e (epoch seconds), state and the
# business hours off_s, open_s, close_s: the row columns after the bucket and slice.
_PIECE_SUMS: Final = """
    COALESCE(sum(e - s) FILTER (WHERE state = ANY({deployed})), 0),
    COALESCE(sum(e - s) FILTER (WHERE state = ANY({up})), 0),
    COALESCE(sum(e - s) FILTER (WHERE state = ANY({failure})), 0),
    COALESCE(sum(e - s) FILTER (WHERE state = ANY({good})), 0),
    COALESCE(sum(business_seconds(e, off_s, open_s, close_s) - business_seconds(s, off_s, open_s, close_s))
        FILTER (WHERE state = ANY({deployed})), 0),
    COALESCE(sum(business_seconds(e, off_s, open_s, close_s) - business_seconds(s, off_s, open_s, close_s))
        FILTER (WHERE state = ANY({up})), 0),
    sum(failures), sum(repairs), sum(repair_s)
"""
_ADD: Final = """
ON CONFLICT ({key}, store_id, model, firmware) DO UPDATE SET
    deployed_s = t.deployed_s + EXCLUDED.deployed_s, up_s = t.up_s + EXCLUDED.up_s,
    failure_s = t.failure_s + EXCLUDED.failure_s, good_s = t.good_s + EXCLUDED.good_s,
    b_expected_s = t.b_expected_s + EXCLUDED.b_expected_s, b_up_s = t.b_up_s + EXCLUDED.b_up_s,
    failures = t.failures + EXCLUDED.failures, repairs = t.repairs + EXCLUDED.repairs,
    repair_s = t.repair_s + EXCLUDED.repair_s
"""
_COLUMNS: Final = (
    "store_id, model, firmware, deployed_s, up_s, failure_s, good_s, b_expected_s, b_up_s, failures, repairs, repair_s"
)

# What a batch adds, as unnest() columns: (bucket, store, model, firmware, the nine sums).
ADD_DAYS: Final = (
    f"INSERT INTO figure_days AS t (day, {_COLUMNS})"
    " SELECT * FROM unnest(%s::date[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[],"
    " %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::int4[], %s::int4[], %s::float8[])"
    " ORDER BY 1, 2, 3, 4" + _ADD.format(key="day")
)
ADD_HOURS: Final = (
    f"INSERT INTO figure_hours AS t (hour, {_COLUMNS})"
    " SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[],"
    " %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::int4[], %s::int4[], %s::float8[])"
    " ORDER BY 1, 2, 3, 4" + _ADD.format(key="hour")
)
# (store, model, firmware, state, off_s, open_s, close_s, devices, since_s, since_bs) columns.
ADD_OPEN: Final = """
INSERT INTO figure_open AS t
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[], %s::float8[],
    %s::int4[], %s::float8[], %s::float8[])
ORDER BY 1, 2, 3, 4, 5, 6, 7
ON CONFLICT (store_id, model, firmware, state, off_s, open_s, close_s) DO UPDATE SET
    devices = t.devices + EXCLUDED.devices, since_s = t.since_s + EXCLUDED.since_s,
    since_bs = t.since_bs + EXCLUDED.since_bs
"""

# -- the checkpoint: every device's open piece up to the hour %(h)s moved into the rows ------

# Pieces [max(state_since, %(c)s), %(h)s) of every rolled device, by hour and by local day.
# Parameters: c, h (epoch seconds), hours_from (epoch seconds), fleet_offset (minutes).
_OPEN_PIECES: Final = """
WITH dev AS (
    SELECT d.state, d.rolled_store AS store, d.rolled_model AS model, d.rolled_firmware AS firmware,
           d.rolled_off_s AS off_s, d.rolled_open_s AS open_s, d.rolled_close_s AS close_s,
           GREATEST(date_part('epoch', d.state_since), %(c)s) AS u
    FROM devices d
    WHERE d.rolled_store IS NOT NULL AND d.state = ANY({deployed})
),
pieces AS (
    SELECT {bucket} AS bucket, store, model, firmware, state, off_s, open_s, close_s,
           GREATEST(u, g) AS s, LEAST(%(h)s, g + {step}) AS e, 0 AS failures, 0 AS repairs, 0.0::float8 AS repair_s
    FROM dev, generate_series({first}, {last}) AS n, LATERAL (SELECT n * {step} - {shift} AS g) x
    WHERE u < %(h)s AND g < %(h)s
)
"""


def _into(table: str, key: str, pieces: str, **parts: str) -> LiteralString:
    """INSERT the sums of `pieces` (a template: bucket, step, shift, first, last) into `table`."""
    names = {name: "{" + name + "}" for name in _NAMES}
    return statement(
        f"INSERT INTO {table} AS t ({key}, {_COLUMNS})"
        + pieces.format(**parts, **names)
        + " SELECT bucket, store, model, firmware, "
        + _PIECE_SUMS
        + " FROM pieces GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        + _ADD.format(key=key),
        **_NAMES,
    )


_HOUR_BUCKETS: Final = {"bucket": "to_timestamp(g)", "step": "3600.0::float8", "shift": "0"}
_DAY_BUCKETS: Final = {
    "bucket": "date '1970-01-01' + n::int",
    "step": "86400.0::float8",
    "shift": "%(fleet_offset)s * 60.0",
}
CHECKPOINT_HOURS: Final = _into(
    "figure_hours",
    "hour",
    _OPEN_PIECES,
    **_HOUR_BUCKETS,
    first="floor(GREATEST(u, %(hours_from)s) / 3600)::bigint",
    last="floor(%(h)s / 3600)::bigint",
)
CHECKPOINT_DAYS: Final = _into(
    "figure_days",
    "day",
    _OPEN_PIECES,
    **_DAY_BUCKETS,
    first="floor((u + %(fleet_offset)s * 60.0) / 86400)::bigint",
    last="floor((%(h)s + %(fleet_offset)s * 60.0) / 86400)::bigint",
)
# The open sums again from every rolled device, their pieces now starting at the hour %(h)s.
REOPEN: Final = (
    "INSERT INTO figure_open SELECT store, model, firmware, state, off_s, open_s, close_s, count(*), sum(u),"
    " sum(business_seconds(u, off_s, open_s, close_s)) FROM ("
    " SELECT d.rolled_store AS store, d.rolled_model AS model, d.rolled_firmware AS firmware, d.state,"
    " d.rolled_off_s AS off_s, d.rolled_open_s AS open_s, d.rolled_close_s AS close_s,"
    " GREATEST(date_part('epoch', d.state_since), %(h)s) AS u"
    " FROM devices d WHERE d.rolled_store IS NOT NULL AND d.state IS NOT NULL) o GROUP BY 1, 2, 3, 4, 5, 6, 7"
)
SET_CLOCK: Final = (
    "UPDATE figure_clock SET checkpoint_at = %(at)s, hours_from = %(hours_from)s, offset_min = %(fleet_offset)s,"
    " built_at = COALESCE(%(built)s, built_at), dirty_from = CASE WHEN %(built)s IS NULL THEN dirty_from END"
)
PRUNE_HOURS: Final = "DELETE FROM figure_hours WHERE hour < %s"

# -- the rebuild from raw history ------------------------------------------------------------

# Every device's slice now and the history as intervals, the last one open up to %(h)s, with
# the failure and repair events (the raw figures' definitions). Parameters: h, hours_from
# (epoch seconds), fleet_offset (minutes).
_HISTORY_PIECES: Final = (
    """
WITH sl AS (SELECT d.device_id, """
    + SLICE_NOW
    + f" FROM {DEVICE_HIERARCHY}),"
    + """
h AS (
    SELECT device_id, state, previous, date_part('epoch', at) AS s,
           date_part('epoch', lead(at) OVER w) AS until,
           max(at) FILTER (WHERE state = ANY({failure}) AND NOT COALESCE(previous = ANY({failure}), false))
               OVER w AS run_at,
           max(at) FILTER (WHERE state = {faulty} AND NOT COALESCE(previous = ANY({failure}), false))
               OVER w AS fault_at, at
    FROM device_states
    WINDOW w AS (PARTITION BY device_id ORDER BY at, seq)
),
intervals AS (
    SELECT sl.*, h.state, h.s, COALESCE(h.until, GREATEST(h.s, %(h)s)) AS e FROM h JOIN sl USING (device_id)
    WHERE h.state = ANY({deployed})
),
events AS (
    SELECT sl.*, h.s AS at_s,
           (h.state = {faulty} AND NOT COALESCE(h.previous = ANY({failure}), false))::int AS failures,
           (h.previous = ANY({failure}) AND h.state = ANY({up}) AND h.fault_at = h.run_at)::int AS repairs,
           CASE WHEN h.previous = ANY({failure}) AND h.state = ANY({up}) AND h.fault_at = h.run_at
                THEN date_part('epoch', h.at - h.fault_at) ELSE 0 END AS repair_s
    FROM h JOIN sl USING (device_id)
),
pieces AS (
    SELECT {bucket} AS bucket, store, model, firmware, state, off_s, open_s, close_s,
           GREATEST(s, g) AS s, LEAST(e, g + {step}) AS e, 0 AS failures, 0 AS repairs, 0.0::float8 AS repair_s
    FROM intervals, generate_series({first}, {last}) AS n, LATERAL (SELECT n * {step} - {shift} AS g) x
    WHERE e > s AND e > %(floor)s AND g < e
    UNION ALL
    SELECT {event_bucket}, store, model, firmware, NULL, off_s, open_s, close_s, 0, 0, failures, repairs, repair_s
    FROM events WHERE (failures > 0 OR repairs > 0) AND at_s >= %(floor)s
)
"""
)
REBUILD_DAYS: Final = _into(
    "figure_days",
    "day",
    _HISTORY_PIECES.replace("%(floor)s", "'-infinity'::float8"),
    **_DAY_BUCKETS,
    event_bucket="date '1970-01-01' + floor((at_s + %(fleet_offset)s * 60.0) / 86400)::int",
    first="floor((s + %(fleet_offset)s * 60.0) / 86400)::bigint",
    last="floor((e + %(fleet_offset)s * 60.0) / 86400)::bigint",
)
REBUILD_HOURS: Final = _into(
    "figure_hours",
    "hour",
    _HISTORY_PIECES.replace("%(floor)s", "%(hours_from)s"),
    **_HOUR_BUCKETS,
    event_bucket="to_timestamp(floor(at_s / 3600) * 3600)",
    first="floor(GREATEST(s, %(hours_from)s) / 3600)::bigint",
    last="floor(e / 3600)::bigint",
)
# Each device's state, current deployed span, current failure run and slice from its history.
# Parameters: fleet_offset.
REBUILD_DEVICES: Final = statement(
    """
WITH g AS (
    SELECT *, count(*) FILTER (WHERE previous = {retired} AND state <> {retired})
                  OVER (PARTITION BY device_id ORDER BY at, seq) AS span
    FROM device_states
),
h AS (
    SELECT device_id, state, previous, at, seq,
           max(at) FILTER (WHERE state = ANY({failure}) AND NOT COALESCE(previous = ANY({failure}), false))
               OVER w AS run_at,
           max(at) FILTER (WHERE state = {faulty} AND NOT COALESCE(previous = ANY({failure}), false))
               OVER w AS fault_at,
           min(at) FILTER (WHERE state <> {retired}) OVER (PARTITION BY device_id, span) AS deployed_from
    FROM g WINDOW w AS (PARTITION BY device_id ORDER BY at, seq)
),
last AS (SELECT DISTINCT ON (device_id) * FROM h ORDER BY device_id, at DESC, seq DESC),
sl AS (SELECT d.device_id, """
    + SLICE_NOW
    + f" FROM {DEVICE_HIERARCHY})"
    + """
UPDATE devices d SET state = last.state, state_since = last.at, deployed_from = last.deployed_from,
    retired_at = CASE WHEN last.state = {retired} THEN last.at END,
    run_fault_at = CASE WHEN last.state = ANY({failure}) AND last.fault_at = last.run_at THEN last.fault_at END,
    rolled_store = sl.store, rolled_model = sl.model, rolled_firmware = sl.firmware,
    rolled_off_s = sl.off_s, rolled_open_s = sl.open_s, rolled_close_s = sl.close_s
FROM last JOIN sl USING (device_id)
WHERE d.device_id = last.device_id
""",
    **_NAMES,
)
# Devices without history have no rolled time; the seen days of every deployed day.
UNROLL_SILENT: Final = (
    "UPDATE devices SET rolled_store = NULL, deployed_from = NULL, retired_at = NULL, run_fault_at = NULL"
    " WHERE NOT EXISTS (SELECT 1 FROM device_states h WHERE h.device_id = devices.device_id)"
    " AND rolled_store IS NOT NULL"
)
CLEAR: Final = (
    "DELETE FROM figure_days",
    "DELETE FROM figure_hours",
    "DELETE FROM figure_open",
    "DELETE FROM figure_spans",
)
# The deployed spans of every rolled device, at the edges `ledger.Ledger.edge` gives (whole
# hours, or local days before the hours kept), 'not retired' as NOT_RETIRED. Parameters:
# hours_from (epoch seconds), fleet_offset.
NOT_RETIRED: Final = "timestamptz '9999-12-31 23:59:59.999999+00'"
_UTC: Final = "({t} AT TIME ZONE 'UTC')"
_OFF: Final = "make_interval(mins => %(fleet_offset)s)"
_SPAN_EDGE: Final = (
    "(CASE WHEN date_trunc('hour', {u}) >= to_timestamp(%(hours_from)s) AT TIME ZONE 'UTC'"
    " THEN date_trunc('hour', {u}) ELSE date_trunc('day', {u} + {off}) - {off} END) AT TIME ZONE 'UTC'"
)
_SPAN_EDGE_UP: Final = (
    "(CASE WHEN date_trunc('hour', {u} - interval '1 microsecond') + interval '1 hour'"
    " >= to_timestamp(%(hours_from)s) AT TIME ZONE 'UTC'"
    " THEN date_trunc('hour', {u} - interval '1 microsecond') + interval '1 hour'"
    " ELSE date_trunc('day', {u} - interval '1 microsecond' + {off}) + interval '1 day' - {off} END) AT TIME ZONE 'UTC'"
)


def _edge(template: str, column: str) -> str:
    return template.format(u=_UTC.format(t=column), off=_OFF)


_ON_SPAN: Final = (
    " ON CONFLICT (store_id, model, firmware, deployed_at, retired_at)"
    " DO UPDATE SET devices = t.devices + EXCLUDED.devices"
)
# A device deployed more than once has, beside its spans, the gap between each two taken off
# once: a span from the later one's start to the earlier one's end (its "retired" before its
# "deployed"), -1, which meets exactly the windows that meet both (`rolled.py` counts a device in a
# window, and a day, once). `rollups.roll` writes the same.
REBUILD_SPANS: Final = (
    "WITH " + SPANS + ", runs AS (SELECT device_id, deployed_from, retired_at, 1 AS n FROM spans"
    " UNION ALL SELECT device_id, deployed_from, lag(retired_at) OVER"
    " (PARTITION BY device_id ORDER BY deployed_from), -1 FROM spans)"
    " INSERT INTO figure_spans SELECT d.rolled_store, d.rolled_model, d.rolled_firmware, "
    + _edge(_SPAN_EDGE, "s.deployed_from")
    + ", COALESCE("
    + _edge(_SPAN_EDGE_UP, "s.retired_at")
    + f", {NOT_RETIRED}), sum(s.n) FROM runs s JOIN devices d USING (device_id) WHERE d.rolled_store IS NOT NULL"
    " AND (s.n = 1 OR s.retired_at IS NOT NULL) GROUP BY 1, 2, 3, 4, 5 HAVING sum(s.n) <> 0"
)
# Spans whose hours are now before the hours kept, kept as local days from here on.
SPANS_TO_DAYS: Final = (
    "WITH old AS (DELETE FROM figure_spans WHERE deployed_at < to_timestamp(%(hours_from)s)"
    " OR retired_at < to_timestamp(%(hours_from)s) RETURNING *)"
    " INSERT INTO figure_spans AS t SELECT store_id, model, firmware, "
    + _edge(_SPAN_EDGE, "deployed_at")
    + f", CASE WHEN retired_at = {NOT_RETIRED} THEN retired_at ELSE "
    + _edge(_SPAN_EDGE_UP, "retired_at")
    + " END, sum(devices) FROM old GROUP BY 1, 2, 3, 4, 5"
    + _ON_SPAN
)
# (store, model, firmware, deployed_at, retired_at, change) columns.
ADD_SPANS: Final = (
    "INSERT INTO figure_spans AS t SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[],"
    " %s::timestamptz[], %s::int4[]) ORDER BY 1, 2, 3, 4, 5" + _ON_SPAN
)

# -- devices whose slice or business hours changed since their time was rolled -------------------

# Rows: (device_id, store, model, firmware, off_s, open_s, close_s) of the slice now. Parameter: fleet_offset.
MOVED: Final = (
    f"SELECT d.device_id, {SLICE_NOW} FROM {DEVICE_HIERARCHY}"
    " WHERE d.rolled_store IS NOT NULL AND (d.rolled_store, d.rolled_model, d.rolled_firmware, d.rolled_off_s,"
    " d.rolled_open_s, d.rolled_close_s) IS DISTINCT FROM (COALESCE(st.store_id, ''), COALESCE(d.model, ''),"
    " COALESCE(d.firmware, ''), 60.0::float8 * COALESCE(m.utc_offset_min, %(fleet_offset)s),"
    " date_part('epoch', COALESCE(m.business_open, time '08:00')),"
    " date_part('epoch', COALESCE(m.business_close, time '22:00')))"
    " ORDER BY d.device_id FOR UPDATE OF d"
)
LOCKED: Final = " FOR UPDATE OF d"
# One device's history and its rolled slice: (state, previous, at) in order.
HISTORY_OF: Final = "SELECT state, previous, at FROM device_states WHERE device_id = %s ORDER BY at, seq"
ROLLED_OF: Final = (
    "SELECT state, state_since, rolled_store, rolled_model, rolled_firmware, rolled_off_s, rolled_open_s,"
    " rolled_close_s FROM devices WHERE device_id = %s"
)
SEEN_DAYS_OF: Final = "SELECT day FROM device_daily WHERE device_id = %s"
# Seen device-days moved between slices: (day, store, model, firmware, change) columns.
ADD_SEEN_COUNTS: Final = (
    "INSERT INTO figure_days AS t (day, store_id, model, firmware, seen_devices)"
    " SELECT * FROM unnest(%s::date[], %s::text[], %s::text[], %s::text[], %s::int4[]) ORDER BY 1, 2, 3, 4"
    " ON CONFLICT (day, store_id, model, firmware) DO UPDATE SET seen_devices = t.seen_devices + EXCLUDED.seen_devices"
)
SET_ROLLED: Final = (
    "UPDATE devices SET rolled_store = %s, rolled_model = %s, rolled_firmware = %s, rolled_off_s = %s,"
    " rolled_open_s = %s, rolled_close_s = %s WHERE device_id = %s"
)
