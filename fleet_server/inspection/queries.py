"""The SQL of inspection and tasks: the facts the detectors read, the heartbeat and activity
scans of the inspector's round, and the task book. State and status names come from their enums.
"""

from __future__ import annotations

from typing import Final

from fleet_server.db.fetch import statement
from fleet_server.db.hierarchy import DEVICE_HIERARCHY, STORE_OF_DEVICE, TASK_WITHIN_REACH
from fleet_server.devices.states import UP_STATES, DeviceState
from fleet_server.inspection.rules import TaskStatus

S = DeviceState

# -- the inspector's round ----------------------------------------------------------------

# Facts of every device that could have a finding (the rest cannot): its state and when it was
# last seen, its merchant's first and last payment, the last two local days' fault events, audio
# failures, reconnects and degraded parts, the cause of a fault, the kinds of its tasks closed since, its
# installation and last GPS position, the messages of it quarantined since. Parameters:
# since_day, since, flapping, idle_before, poison, clock_board_ms, clock_skew_ms, anchor.
FACTS: Final = statement(
    """
WITH merchant_payments AS (
    SELECT merchant_id, min(received_at) AS first_at, max(received_at) AS last_at FROM payments GROUP BY merchant_id
),
recent AS (
    SELECT device_id, sum(fault_events) AS fault_events, sum(audio_failures) AS audio_failures,
           sum(reconnects) AS reconnects, sum(degraded_events) AS degraded_events
    FROM device_daily WHERE day >= %(since_day)s GROUP BY device_id
),
degraded AS (
    SELECT device_id, array_agg(DISTINCT part ORDER BY part) AS parts
    FROM device_daily, unnest(degraded_parts) AS part WHERE day >= %(since_day)s GROUP BY device_id
),
closed AS (
    SELECT device_id, array_agg(DISTINCT kind) AS kinds FROM tasks
    WHERE status = {closed} AND closed_at >= %(since)s GROUP BY device_id
),
poison AS (
    SELECT device_id, count(*) AS quarantined FROM quarantine
    WHERE device_id IS NOT NULL AND last_at >= %(since)s GROUP BY device_id
),
last_cause AS (
    SELECT DISTINCT ON (device_id) device_id, cause FROM device_states
    WHERE device_id IN (SELECT device_id FROM devices WHERE state = {faulty})
    ORDER BY device_id, at DESC, seq DESC
)
SELECT d.device_id, d.state, d.last_seen, d.planned_removal, d.install_lat, d.install_lon,
       GREATEST(d.installed_at, d.first_contact) AS learning_from,
       d.last_gps_lat, d.last_gps_lon, mp.first_at, mp.last_at, lc.cause,
       COALESCE(r.fault_events, 0) AS fault_events, COALESCE(r.audio_failures, 0) AS audio_failures,
       COALESCE(r.reconnects, 0) AS reconnects, COALESCE(r.degraded_events, 0) AS degraded_events,
       COALESCE(dg.parts, '{{}}') AS degraded_parts, COALESCE(cl.kinds, '{{}}') AS closed_kinds,
       COALESCE(po.quarantined, 0) AS quarantined,
       dc.board_offset_ms AS clock_board_offset_ms, dc.skew_ms AS clock_skew_ms, dc.reported_at AS clock_reported_at,
       dc.refused_skew_s AS clock_refused_skew_s, dc.refused_at AS clock_refused_at
FROM devices d
LEFT JOIN bindings b USING (device_id)
LEFT JOIN merchant_payments mp USING (merchant_id)
LEFT JOIN recent r USING (device_id)
LEFT JOIN degraded dg USING (device_id)
LEFT JOIN last_cause lc USING (device_id)
LEFT JOIN closed cl USING (device_id)
LEFT JOIN poison po USING (device_id)
LEFT JOIN device_clocks dc USING (device_id)
WHERE d.state IS NOT NULL AND d.state <> {retired}
  AND (d.state = ANY({watched})
       OR r.fault_events > 0 OR r.audio_failures > 0 OR r.degraded_events > 0 OR r.reconnects >= %(flapping)s
       OR po.quarantined >= %(poison)s
       OR (mp.last_at < %(idle_before)s AND d.state = {in_service})
       -- A cell outside what was learned, or the device is now on a cell first seen after its
       -- first hours (a move during learning; detectors.home_cells decides).
       OR EXISTS (SELECT 1 FROM device_cells c WHERE c.device_id = d.device_id
                  AND (NOT c.learned OR (c.cell = d.last_cell
                       AND c.first_seen > GREATEST(d.installed_at, d.first_contact) + %(anchor)s)))
       -- A fix away from where it was installed (some 200 m or more; placement.py decides).
       OR abs(d.last_gps_lat - d.install_lat) + abs(d.last_gps_lon - d.install_lon) > 0.002
       OR abs(dc.board_offset_ms) > %(clock_board_ms)s OR abs(dc.skew_ms) > %(clock_skew_ms)s
       OR dc.refused_at >= %(since)s)
""",
    closed=TaskStatus.CLOSED,
    faulty=S.FAULTY,
    retired=S.RETIRED,
    watched={S.FAULTY, S.OFFLINE, S.SUSPECTED_LOST, S.RELOCATED},
    in_service=S.IN_SERVICE,
)

# The serving cells of the given devices. Rows: (device_id, cell, area, learned, first_seen,
# last_seen, reports).
CELLS: Final = (
    "SELECT device_id, cell, area, learned, first_seen, last_seen, reports FROM device_cells WHERE device_id = ANY(%s)"
)

# Devices in an up state silent for longer than their allowance (a factor of the health interval
# each reported, or of the fleet's default for those that never said), with the time they went
# silent (their last word plus the allowance, but not before their state began): (device_id, at,
# allowance in s). Parameters: factor, default interval (s), now.
SILENT: Final = statement(
    "SELECT device_id, GREATEST(last_seen + make_interval(secs => allowance), state_since), allowance"
    " FROM (SELECT device_id, last_seen, state_since, %s * COALESCE(health_interval_s, %s) AS allowance"
    "  FROM devices WHERE state = ANY({up})) d"
    " WHERE last_seen < %s - make_interval(secs => allowance)",
    up=UP_STATES,
)

# Idle devices whose merchant took a payment after they went idle: (device_id).
ACTIVE_AGAIN: Final = statement(
    "SELECT d.device_id FROM devices d JOIN bindings b USING (device_id)"
    " WHERE d.state = {idle} AND EXISTS (SELECT 1 FROM payments p"
    "  WHERE p.merchant_id = b.merchant_id AND p.received_at > d.state_since)",
    idle=S.IDLE,
)

# -- the task book ------------------------------------------------------------------------

# A finding opens a task for its device's field agent (the device's own, else its store's), or
# merges into the device's open task of that kind: (inserted) true for a new task.
OPEN_OR_MERGE: Final = statement(
    "INSERT INTO tasks AS t"  # noqa: S608 - constant fragments; values are parameters.
    " (device_id, kind, store_id, agent_id, confidence, evidence, action_zh, action_en,"
    " opened_at, updated_at, due_at)"
    f" SELECT d.device_id, %(kind)s, {STORE_OF_DEVICE}, COALESCE(d.agent_id, st.agent_id),"
    " %(confidence)s, %(evidence)s, %(zh)s, %(en)s, %(now)s, %(now)s, %(due)s"
    f" FROM {DEVICE_HIERARCHY} WHERE d.device_id = %(device)s"
    " ON CONFLICT (device_id, kind) WHERE status <> {closed} DO UPDATE SET"
    " occurrences = t.occurrences + 1, evidence = EXCLUDED.evidence,"
    " confidence = EXCLUDED.confidence, updated_at = EXCLUDED.updated_at"
    " RETURNING (xmax = 0) AS inserted, task_id",
    closed=TaskStatus.CLOSED,
)

_TASK: Final = (
    "SELECT t.*, d.state AS device_state, COALESCE(d.serial, d.reported_serial) AS serial, d.install_address,"
    " d.install_lat, d.install_lon FROM tasks t LEFT JOIN devices d USING (device_id)"
)
# Tasks matching every filter given (NULL matches all), newest first. Rows: Task.
FIND_TASKS: Final = statement(
    _TASK + " WHERE (%(status)s::text IS NULL OR t.status = %(status)s)"
    " AND (%(agent)s::text IS NULL OR t.agent_id = %(agent)s)"
    " AND (%(store)s::text IS NULL OR t.store_id = %(store)s)"
    " AND (%(device)s::text IS NULL OR t.device_id = %(device)s)"
    " AND (NOT %(open_only)s OR t.status <> {closed})"
    f" AND {TASK_WITHIN_REACH}"
    " ORDER BY t.opened_at DESC LIMIT %(limit)s",
    closed=TaskStatus.CLOSED,
)
# One task. Rows: Task.
TASK: Final = _TASK + " WHERE t.task_id = %s"
# Findings held back by a false alarm: (device ids, now). Rows: (device_id, kind).
SUPPRESSED: Final = "SELECT device_id, kind FROM finding_suppressions WHERE device_id = ANY(%s) AND until > %s"
# Open tasks past their due time, not yet escalated, marked escalated now: (now, now). Rows: (task_id).
ESCALATE: Final = statement(
    "UPDATE tasks SET escalated_at = %s WHERE status <> {closed} AND escalated_at IS NULL AND due_at <= %s"
    " RETURNING task_id",
    closed=TaskStatus.CLOSED,
)
# A task cancelled: (reason, by, note, now, now, task_id).
CANCEL: Final = statement(
    "UPDATE tasks SET status = {closed}, cancel_reason = %s, cancelled_by = %s, close_note = %s,"
    " verification = 'cancelled', closed_at = %s, updated_at = %s WHERE task_id = %s",
    closed=TaskStatus.CLOSED,
)
# A finding held back for a device until a time: (device, kind, until, reason, by, task, now).
SUPPRESS: Final = (
    "INSERT INTO finding_suppressions (device_id, kind, until, reason, by_login, task_id, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device_id, kind) DO UPDATE SET until = EXCLUDED.until,"
    " reason = EXCLUDED.reason, by_login = EXCLUDED.by_login, task_id = EXCLUDED.task_id,"
    " created_at = EXCLUDED.created_at"
)
# One task within reach (`reach_params`, TASK_WITHIN_REACH). Rows: Task.
TASK_WITHIN: Final = _TASK + f" WHERE t.task_id = %(id)s AND {TASK_WITHIN_REACH}"
# Tasks not yet closed, by kind: (kind, count).
OPEN_COUNTS: Final = statement(
    "SELECT kind, count(*) FROM tasks WHERE status <> {closed} GROUP BY kind", closed=TaskStatus.CLOSED
)
# Whether a field agent exists: one row, or none.
AGENT_KNOWN: Final = "SELECT 1 FROM field_agents WHERE agent_id = %s"

# The moves a person makes, each only from the statuses that allow it (checked before): the
# task's new fields, then updated_at and the task id.
ASSIGN: Final = "UPDATE tasks SET agent_id = %s, updated_at = %s WHERE task_id = %s"
START: Final = statement(
    "UPDATE tasks SET status = {in_progress}, started_at = %s, updated_at = %s WHERE task_id = %s",
    in_progress=TaskStatus.IN_PROGRESS,
)
REQUEST_CLOSE: Final = statement(
    "UPDATE tasks SET status = {verifying}, close_requested_at = %s, close_note = %s,"
    " verification = 'waiting for the device to be verified healthy', updated_at = %s WHERE task_id = %s",
    verifying=TaskStatus.VERIFYING,
)

# The tasks waiting for verification, locked, with their device's state: (task_id, kind, state).
VERIFYING: Final = statement(
    "SELECT t.task_id, t.kind, d.state FROM tasks t JOIN devices d USING (device_id)"
    " WHERE t.status = {verifying} FOR UPDATE OF t",
    verifying=TaskStatus.VERIFYING,
)
# The outcome of one verification: (note, now, fixed, fixed, now, task_id); a fixed task closes.
VERIFIED: Final = statement(
    "UPDATE tasks SET verification = %s, updated_at = %s,"
    " status = CASE WHEN %s THEN {closed} ELSE status END,"
    " closed_at = CASE WHEN %s THEN %s ELSE closed_at END WHERE task_id = %s",
    closed=TaskStatus.CLOSED,
)

# A retired device's tasks not yet closed, closed now: (note, now, now, device_id). Rows: (task_id).
CLOSE_FOR_RETIRED: Final = statement(
    "UPDATE tasks SET status = {closed}, closed_at = %s, updated_at = %s, verification = %s"
    " WHERE device_id = %s AND status <> {closed} RETURNING task_id",
    closed=TaskStatus.CLOSED,
)
# A device's state, locked: (state) or no row.
DEVICE_STATE: Final = "SELECT state FROM devices WHERE device_id = %s FOR UPDATE"

# The round's session lock (one process runs a round at a time): (taken), then its release.
TRY_ROUND_LOCK: Final = "SELECT pg_try_advisory_lock(%s)"
ROUND_UNLOCK: Final = "SELECT pg_advisory_unlock(%s)"
