"""Request parameters several slices take, defined once: a device id in the path, and a time
window (`start`, `end`) checked the same way everywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Path, Query

from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.errors import ApiError

DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN.pattern, description="Device id")]
Start = Annotated[
    datetime | None,
    Query(description="Window start (ISO 8601 with zone); default: the whole hour 24 h before end"),
]
End = Annotated[datetime | None, Query(description="Window end (ISO 8601 with zone); default: now")]

# A window longer than this is refused: a year of figures is the longest report anyone asks for.
MAX_WINDOW = timedelta(days=366)


# Times a window may name: before the fleet existed or centuries ahead is a mistake, and near
# the ends of the calendar the day arithmetic overflows (year 1 or 9999, found by the fuzzer).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """[start, end) with the defaults (the last 24 hours from a whole hour: the figures' rollups
    answer that window exactly), or a 422 saying what is wrong."""
    for name, value in (("start", start), ("end", end)):
        if value is None:
            continue
        if value.tzinfo is None:
            raise ApiError(
                422,
                "BAD_WINDOW",
                f"{name} needs a time zone, e.g. 2026-11-01T00:00:00+08:00",
                f"{name} 需要带时区，例如 2026-11-01T00:00:00+08:00",
            )
        if not EARLIEST <= value <= LATEST:
            raise ApiError(
                422, "BAD_WINDOW", f"{name} must be between 2000 and 2200", f"{name} 须在 2000 年至 2200 年之间"
            )
    end = end or datetime.now(tz=UTC)
    start = start or (end - timedelta(hours=24)).replace(minute=0, second=0, microsecond=0)
    if end <= start:
        raise ApiError(422, "BAD_WINDOW", "the window's end must be after its start", "时间窗口的结束必须晚于开始")
    if end - start > MAX_WINDOW:
        raise ApiError(422, "BAD_WINDOW", "windows are at most 366 days", "时间窗口最长 366 天")
    return start, end
