"""A device's deployed spans and the power-on counts of the days they touch (figure rollups).

A device is deployed from its first state that is not retired until it is retired, and again
from each install after that (`lifecycle`: back from repair, or stocked after a switch-on before
it was registered); `figure_spans` holds the spans and the gaps between them (`rollup_queries.
REBUILD_SPANS`). A device-day is seen (the power-on rate) when the device sent anything that local
day and one of its spans touches it; each is counted once: when its daily row is first written
(`count_seen`), or when a span begins over rows written before it (`count_started`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final

from psycopg import AsyncCursor

from fleet_server.db.batch import columns
from fleet_server.db.fetch import statement
from fleet_server.devices.states import DeviceState

if TYPE_CHECKING:
    from fleet_server.devices.rollups import Clock, Step

_NAMES: Final = {"retired": DeviceState.RETIRED}

# Each device's deployed spans from its history: a span begins at its first state that is not
# retired, or where it is installed again after being retired (a transition whose recorded
# previous state is retired), and ends at its retirement (NULL: it has not). Columns: device_id,
# deployed_from, retired_at. A CTE for the rebuild's statements.
SPANS: Final = statement(
    """spans AS (
    SELECT device_id, min(at) FILTER (WHERE state <> {retired}) AS deployed_from,
           min(at) FILTER (WHERE state = {retired}) AS retired_at
    FROM (SELECT device_id, state, at,
                 count(*) FILTER (WHERE previous = {retired} AND state <> {retired})
                     OVER (PARTITION BY device_id ORDER BY at, seq) AS span
          FROM device_states) g
    GROUP BY device_id, span
    HAVING min(at) FILTER (WHERE state <> {retired}) IS NOT NULL
)""",
    **_NAMES,
)

# Devices with a message on a local day they were deployed, counted once, as the daily rollup
# row is first written: (device_ids, days, offset_min). Only once the rollups are built.
ADD_SEEN: Final = """
INSERT INTO figure_days AS t (day, store_id, model, firmware, seen_devices)
SELECT n.day, d.rolled_store, d.rolled_model, d.rolled_firmware, count(*)
FROM unnest(%(devices)s::text[], %(days)s::date[]) AS n(device_id, day) JOIN devices d USING (device_id)
WHERE d.rolled_store IS NOT NULL
  AND d.deployed_from < (n.day + 1)::timestamp AT TIME ZONE 'UTC' - make_interval(mins => %(offset_min)s)
  AND (d.retired_at IS NULL
       OR d.retired_at > n.day::timestamp AT TIME ZONE 'UTC' - make_interval(mins => %(offset_min)s))
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (day, store_id, model, firmware) DO UPDATE SET seen_devices = t.seen_devices + EXCLUDED.seen_devices
"""

# The seen days of devices whose deployed span began just now, but days their previous span
# (ended at `before`, NULL: none) touched: (devices, before, offset_min).
ADD_SEEN_STARTED: Final = """
INSERT INTO figure_days AS t (day, store_id, model, firmware, seen_devices)
SELECT n.day, d.rolled_store, d.rolled_model, d.rolled_firmware, count(*)
FROM unnest(%(devices)s::text[], %(before)s::timestamptz[]) AS s(device_id, before)
JOIN device_daily n USING (device_id) JOIN devices d USING (device_id)
WHERE d.rolled_store IS NOT NULL
  AND d.deployed_from < (n.day + 1)::timestamp AT TIME ZONE 'UTC' - make_interval(mins => %(offset_min)s)
  AND (d.retired_at IS NULL
       OR d.retired_at > n.day::timestamp AT TIME ZONE 'UTC' - make_interval(mins => %(offset_min)s))
  AND (s.before IS NULL OR s.before <= n.day::timestamp AT TIME ZONE 'UTC' - make_interval(mins => %(offset_min)s))
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (day, store_id, model, firmware) DO UPDATE SET seen_devices = t.seen_devices + EXCLUDED.seen_devices
"""

_DAY_START: Final = "n.day::timestamp AT TIME ZONE 'UTC' - make_interval(mins => %(fleet_offset)s)"
REBUILD_SEEN: Final = (
    "WITH "  # noqa: S608 - constant fragments.
    + SPANS
    + """
INSERT INTO figure_days AS t (day, store_id, model, firmware, seen_devices)
SELECT n.day, d.rolled_store, d.rolled_model, d.rolled_firmware, count(*)
FROM device_daily n JOIN devices d USING (device_id)
WHERE d.rolled_store IS NOT NULL AND EXISTS (
    SELECT 1 FROM spans s WHERE s.device_id = n.device_id AND s.deployed_from < DAY_START + interval '1 day'
    AND (s.retired_at IS NULL OR s.retired_at > DAY_START))
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (day, store_id, model, firmware) DO UPDATE SET seen_devices = t.seen_devices + EXCLUDED.seen_devices
""".replace("DAY_START", _DAY_START)
)


def starts_span(previous: DeviceState | None, state: DeviceState) -> bool:
    """Whether a transition begins a deployed span: the first deployment, or installed again."""
    return previous in (None, DeviceState.RETIRED) and state is not DeviceState.RETIRED


async def count_seen(
    cur: AsyncCursor[Any], device_days: list[tuple[str, date]], held: Clock, started: set[str]
) -> None:
    """Devices seen for the first time on a local day they were deployed (power-on): the daily
    rows `device_days` just written, but those of devices whose span began just now, which
    `count_started` counted (every row of the new span)."""
    pairs = {(device, day) for device, day in device_days if device not in started}
    if pairs:
        ids, days = columns(sorted(pairs), 2)
        await cur.execute(ADD_SEEN, {"devices": ids, "days": days, "offset_min": held.offset_min})


async def count_started(cur: AsyncCursor[Any], started: dict[str, datetime | None], held: Clock) -> None:
    """The seen days of devices whose deployed span began just now (a message before it was not
    counted), but a day their previous span (which ended at the time given) counted already."""
    if started:
        ids = sorted(started)
        params = {"devices": ids, "before": [started[d] for d in ids], "offset_min": held.offset_min}
        await cur.execute(ADD_SEEN_STARTED, params)


def deployed_spans(history: list[Step]) -> Iterator[tuple[datetime, datetime | None]]:
    """The deployed spans of a device's history (time order), as `rollup_queries.SPANS` finds
    them: from its first state that is not retired, or where it is installed again after being
    retired, to its retirement (None: not retired)."""
    start: datetime | None = None
    end: datetime | None = None
    for at, state, previous in history:
        if previous is DeviceState.RETIRED and state is not DeviceState.RETIRED:
            if start is not None:
                yield start, end
            start, end = at, None
        elif state is DeviceState.RETIRED:
            end = at if end is None else end
        elif start is None:
            start = at
    if start is not None:
        yield start, end
