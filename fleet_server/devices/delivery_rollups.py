"""The delivery rollups (migrations 0015, 0017): announcements settled and played, their latency
histogram, and the payments announced to nobody, by slice or merchant and local day or hour,
and by device and local day (a device's card).

The bridge keeps them: triggers on `deliveries` and `payments` add every change in the
transaction that makes it (migration 0015's `roll_deliveries`, `roll_unrouted`), under the
delivery rollup lock taken shared. What runs here takes it exclusive:

- `rebuild()`: everything again from the raw deliveries and payments (the first build, a new
  fleet offset, `haodian fleet recompute`), one local day at a time.
- `move()`: devices rebound or updated since their deliveries were counted have them moved to
  the slice they now belong to, as the state rollups move their time (`rollups.move_resliced`).
- `prune()`: hour rows before the hours kept.

Lock order: the state rollup lock, then this one, then device rows (the triggers take this one
before they lock a device row).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from psycopg import AsyncCursor

from fleet_server.db.batch import columns
from fleet_server.db.hierarchy import DEVICE_HIERARCHY
from fleet_server.devices.rollup_queries import SLICE_KEY

log = structlog.get_logger(__name__)

# The migration's functions take it shared (its literal there: 1212416038).
DELIVERY_LOCK: Final = 0x4844_0026
_LOCK: Final = "SELECT pg_advisory_xact_lock(%s)"

# Groups of counted deliveries, {source} giving (device_id, store, model, firmware, sign) rows
# `mv` joined to deliveries dl and payments p ({also}: more conditions), added to the rows.
# Parameters: offset_min, hours_from, and the source's.
_ADD: Final = """
SELECT add_deliveries(array_agg(day), array_agg(hour), array_agg(store), array_agg(model), array_agg(firmware),
                      array_agg(n), array_agg(p), array_agg(lb))
FROM (
    SELECT local_day(p.received_at, %(offset_min)s) AS day,
           CASE WHEN p.received_at >= %(hours_from)s THEN utc_hour(p.received_at) END AS hour,
           mv.store, mv.model, mv.firmware, latency_bucket(dl.play_started_at, p.received_at) AS lb,
           sum(mv.sign)::int AS n, COALESCE(sum(mv.sign) FILTER (WHERE delivery_heard(dl.status)), 0)::int AS p
    FROM {source}
    WHERE delivery_counted(p.kind, dl.status){also}
    GROUP BY 1, 2, 3, 4, 5, 6
) g
"""
# Every device's deliveries of payments received in [from, to), under its announced slice.
REBUILD_DAY: Final = _ADD.format(
    source="payments p JOIN deliveries dl USING (payment_id)"
    " JOIN (SELECT device_id, announced_store AS store, announced_model AS model, announced_firmware AS firmware,"
    " 1 AS sign FROM devices) mv USING (device_id)",
    also=" AND p.received_at >= %(from)s AND p.received_at < %(to)s",
)
# Moved devices' deliveries out of the old slice (sign -1) and into the new one (+1).
MOVE: Final = _ADD.format(
    source="unnest(%(ids)s::text[], %(stores)s::text[], %(models)s::text[], %(firmwares)s::text[], %(signs)s::int[])"
    " AS mv (device_id, store, model, firmware, sign)"
    " JOIN deliveries dl USING (device_id) JOIN payments p USING (payment_id)",
    also="",
)
# Every device's deliveries of payments received in [from, to) by device (migration 0017).
REBUILD_DEVICE_DAY: Final = """
SELECT add_device_deliveries(array_agg(device_id), array_agg(day), array_agg(n), array_agg(p), array_agg(lb))
FROM (
    SELECT dl.device_id, local_day(p.received_at, %(offset_min)s) AS day,
           latency_bucket(dl.play_started_at, p.received_at) AS lb, count(*)::int AS n,
           count(*) FILTER (WHERE delivery_heard(dl.status))::int AS p
    FROM payments p JOIN deliveries dl USING (payment_id)
    WHERE delivery_counted(p.kind, dl.status) AND p.received_at >= %(from)s AND p.received_at < %(to)s
    GROUP BY 1, 2, 3
) g
"""
CLEAR: Final = (
    "DELETE FROM delivery_days",
    "DELETE FROM delivery_device_days",
    "DELETE FROM delivery_hours",
    "DELETE FROM unrouted_days",
    "DELETE FROM unrouted_hours",
)
ANNOUNCED_NOW: Final = (
    "UPDATE devices d SET announced_store = s.store, announced_model = s.model, announced_firmware = s.firmware"
    f" FROM (SELECT d.device_id, {SLICE_KEY} FROM {DEVICE_HIERARCHY}) s WHERE s.device_id = d.device_id"
)
RECEIVED_SPAN: Final = "SELECT min(received_at), max(received_at) FROM payments"
SET_BUILT: Final = "UPDATE figure_clock SET deliveries_offset_min = %s"
# Unrouted payments counted again: clearing the mark of every payment that has it or should
# (no delivery) makes the payments trigger count each one (`roll_unrouted`).
RECOUNT_UNROUTED: Final = (
    "UPDATE payments p SET unrouted_at = NULL WHERE p.unrouted_at IS NOT NULL"
    " OR (p.kind IN ('payment', 'refund')"
    " AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.payment_id = p.payment_id))"
)
CLEAR_MARKS: Final = "UPDATE payments SET unrouted_at = NULL WHERE unrouted_at IS NOT NULL"
# Devices whose slice changed since their deliveries were counted: (device_id, old store,
# model, firmware, new store, model, firmware), locked.
MOVED: Final = (
    f"SELECT d.device_id, d.announced_store, d.announced_model, d.announced_firmware, {SLICE_KEY}"
    f" FROM {DEVICE_HIERARCHY}"
    " WHERE d.announced_store IS NOT NULL AND (d.announced_store, d.announced_model, d.announced_firmware)"
    " IS DISTINCT FROM (COALESCE(st.store_id, ''), COALESCE(d.model, ''), COALESCE(d.firmware, ''))"
    " ORDER BY d.device_id FOR UPDATE OF d"
)
SET_ANNOUNCED: Final = (
    "UPDATE devices d SET announced_store = u.store, announced_model = u.model, announced_firmware = u.firmware"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u (device_id, store, model, firmware)"
    " WHERE d.device_id = u.device_id"
)
PRUNE: Final = ("DELETE FROM delivery_hours WHERE hour < %s", "DELETE FROM unrouted_hours WHERE hour < %s")


async def lock(cur: AsyncCursor[Any]) -> None:
    """The delivery rollup lock, exclusive, for the transaction: taken before any device row is
    locked (the triggers lock device rows after taking it shared)."""
    await cur.execute(_LOCK, (DELIVERY_LOCK,))


async def rebuild(cur: AsyncCursor[Any], *, offset_min: int, hours_from: datetime) -> None:
    """The delivery rollups again from raw history, in the caller's transaction (`lock()` held)."""
    await cur.execute(SET_BUILT, (None,))  # the triggers stand still while the marks are cleared
    await cur.execute(CLEAR_MARKS)
    for statement in CLEAR:
        await cur.execute(statement)
    await cur.execute(ANNOUNCED_NOW)
    await cur.execute(RECEIVED_SPAN)
    first, last = await cur.fetchone() or (None, None)
    days = 0
    if first is not None and last is not None:
        at = first
        while at <= last:
            upto = at + timedelta(days=1)
            params = {"offset_min": offset_min, "hours_from": hours_from, "from": at, "to": upto}
            await cur.execute(REBUILD_DAY, params)
            await cur.execute(REBUILD_DEVICE_DAY, params)
            at, days = upto, days + 1
    await cur.execute(SET_BUILT, (offset_min,))
    await cur.execute(RECOUNT_UNROUTED)
    log.info("delivery rollups rebuilt from history", days=days)


async def move(cur: AsyncCursor[Any], *, offset_min: int, hours_from: datetime) -> int:
    """Deliveries of devices rebound or updated moved to their new slice, in the caller's
    transaction (`lock()` held). Returns how many devices moved."""
    await cur.execute(MOVED)
    moved = await cur.fetchall()
    if not moved:
        return 0
    rows = [(device, *old, -1) for device, *slices in moved for old in [slices[:3]]]
    rows += [(device, *new, 1) for device, *slices in moved for new in [slices[3:]]]
    ids, stores, models, firmwares, signs = columns(rows, 5)
    params = {"offset_min": offset_min, "hours_from": hours_from, "ids": ids, "stores": stores}
    await cur.execute(MOVE, {**params, "models": models, "firmwares": firmwares, "signs": signs})
    await cur.execute(SET_ANNOUNCED, columns([(device, *slices[3:]) for device, *slices in moved], 4))
    return len(moved)


async def prune(cur: AsyncCursor[Any], hours_from: datetime) -> None:
    for statement in PRUNE:
        await cur.execute(statement, (hours_from,))
