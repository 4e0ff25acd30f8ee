"""The arithmetic of the figure rollups, pure: an interval of a device in one state turned into
the additive sums of each local day and UTC hour it touches, and the moves of the open sums.

    ledger = Ledger(offset_s=8 * 3600, hours_from=...)
    ledger.add_interval(slice_, profile, DeviceState.FAULTY, s, e)   # epoch seconds, [s, e)
    ledger.add_event(slice_, at, failures=1)
    ledger.open(slice_, DeviceState.IN_SERVICE, profile, since, +1)
    ledger.rows    # {(HOUR | DAY, bucket, slice): Sums}, what the rows get added
    ledger.opens   # {(slice, state, profile): OpenSums}, what the open sums get added

The same sums the raw figures query (`fleet_server.figures.queries.FIGURES`) takes over the state
history: the state groups are `states.py`'s, business time is `business_seconds()` of migration
0003, written again here in Python (pinned to the SQL function by a test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Final

from fleet_server.devices.states import DEPLOYED_STATES, FAILURE_STATES, GOOD_STATES, UP_STATES, DeviceState

HOUR_S: Final = 3600.0
DAY_S: Final = 86400.0
EPOCH_DAY: Final = date(1970, 1, 1)
NOT_RETIRED: Final = datetime.max.replace(tzinfo=UTC)  # figure_spans's "not retired" (rollup_queries)


class Grain(StrEnum):
    HOUR = "hour"
    DAY = "day"


@dataclass(frozen=True, slots=True)
class Slice:
    """Where a device's figures are summed: its store, model and firmware ('' for none)."""

    store: str
    model: str
    firmware: str


@dataclass(frozen=True, slots=True)
class Profile:
    """A merchant's business hours: UTC offset, opening and closing, in seconds."""

    off_s: float
    open_s: float
    close_s: float

    @classmethod
    def default(cls, offset_min: int) -> Profile:
        return cls(60.0 * offset_min, 8 * HOUR_S, 22 * HOUR_S)


def business_seconds(epoch_s: float, p: Profile) -> float:
    """Seconds of business hours from the local epoch to `epoch_s` (migration 0003's function)."""
    local = epoch_s + p.off_s
    days = math.floor(local / DAY_S)
    into = local - days * DAY_S
    if p.close_s > p.open_s:
        return days * (p.close_s - p.open_s) + min(max(into - p.open_s, 0.0), p.close_s - p.open_s)
    return days * (p.close_s + DAY_S - p.open_s) + min(into, p.close_s) + max(into - p.open_s, 0.0)


@dataclass(slots=True)
class Sums:
    deployed_s: float = 0.0
    up_s: float = 0.0
    failure_s: float = 0.0
    good_s: float = 0.0
    b_expected_s: float = 0.0
    b_up_s: float = 0.0
    failures: int = 0
    repairs: int = 0
    repair_s: float = 0.0

    def add(self, other: Sums, sign: int = 1) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + sign * getattr(other, f.name))

    def values(self) -> tuple[float | int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


SUM_COLUMNS: Final = tuple(f.name for f in fields(Sums))


def interval_sums(state: DeviceState, s: float, e: float, p: Profile) -> Sums:
    """The sums of one device in `state` over [s, e)."""
    if e <= s or state not in DEPLOYED_STATES:
        return Sums()
    span = e - s
    business = business_seconds(e, p) - business_seconds(s, p)
    up = state in UP_STATES
    return Sums(
        deployed_s=span,
        up_s=span if up else 0.0,
        failure_s=span if state in FAILURE_STATES else 0.0,
        good_s=span if state in GOOD_STATES else 0.0,
        b_expected_s=business,
        b_up_s=business if up else 0.0,
    )


def local_day(epoch_s: float, offset_s: float) -> date:
    return EPOCH_DAY + timedelta(days=math.floor((epoch_s + offset_s) / DAY_S))


def day_start(day: date, offset_s: float) -> float:
    return (day - EPOCH_DAY).days * DAY_S - offset_s


def hour_of(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(math.floor(epoch_s / HOUR_S) * HOUR_S, tz=UTC)


def split(s: float, e: float, step: float, offset_s: float) -> list[tuple[float, float, float]]:
    """[s, e) cut at every multiple of `step` in local time: (bucket start, piece start, piece end)."""
    out: list[tuple[float, float, float]] = []
    at = s
    while at < e:
        start = math.floor((at + offset_s) / step) * step - offset_s
        end = min(e, start + step)
        out.append((start, at, end))
        at = end
    return out


@dataclass(slots=True)
class OpenSums:
    devices: int = 0
    since_s: float = 0.0
    since_bs: float = 0.0


@dataclass(slots=True)
class Ledger:
    """What a batch adds to the rollup rows and the open sums."""

    offset_s: float
    # Hour rows are kept from here on; pieces before it go to the day rows only.
    hours_from: float

    rows: dict[tuple[Grain, date | datetime, Slice], Sums] = field(default_factory=dict)
    opens: dict[tuple[Slice, DeviceState, Profile], OpenSums] = field(default_factory=dict)
    spans: dict[tuple[Slice, datetime, datetime], int] = field(default_factory=dict)

    def blank(self) -> Ledger:
        """An empty ledger of the same days and hours."""
        return Ledger(self.offset_s, self.hours_from)

    def merge(self, other: Ledger, sign: int = 1) -> None:
        """Add (or take away) the rows of `other`; its open sums are not taken."""
        for key, sums in other.rows.items():
            self.rows.setdefault(key, Sums()).add(sums, sign)

    def _row(self, grain: Grain, bucket: date | datetime, where: Slice) -> Sums:
        return self.rows.setdefault((grain, bucket, where), Sums())

    def add_interval(self, where: Slice, p: Profile, state: DeviceState, s: float, e: float, sign: int = 1) -> None:
        """A device's [s, e) in `state`, added to every day and kept hour it touches."""
        if e <= s or state not in DEPLOYED_STATES:
            return
        for _, ps, pe in split(s, e, DAY_S, self.offset_s):
            self._row(Grain.DAY, local_day(ps, self.offset_s), where).add(interval_sums(state, ps, pe, p), sign)
        for start, ps, pe in split(max(s, self.hours_from), e, HOUR_S, 0.0):
            self._row(Grain.HOUR, hour_of(start), where).add(interval_sums(state, ps, pe, p), sign)

    def add_event(
        self, where: Slice, at: float, *, failures: int = 0, repairs: int = 0, repair_s: float = 0.0, sign: int = 1
    ) -> None:
        event = Sums(failures=failures, repairs=repairs, repair_s=repair_s)
        self._row(Grain.DAY, local_day(at, self.offset_s), where).add(event, sign)
        if at >= self.hours_from:
            self._row(Grain.HOUR, hour_of(at), where).add(event, sign)

    def edge(self, at: datetime, *, up: bool) -> datetime:
        """A deployed span's end as figure_spans keeps it: the whole hour at or before (`up`:
        at or after) `at`, or the local day when that is before the hours kept."""
        epoch = at.timestamp()
        hour = (math.ceil if up else math.floor)(epoch / HOUR_S) * HOUR_S
        if hour >= self.hours_from:
            return datetime.fromtimestamp(hour, tz=UTC)
        days = (math.ceil if up else math.floor)((epoch + self.offset_s) / DAY_S)
        return datetime.fromtimestamp(days * DAY_S - self.offset_s, tz=UTC)

    def span(self, where: Slice, deployed: datetime, retired: datetime | None, sign: int) -> None:
        """A device deployed from `deployed` until `retired` (None: still) joins or leaves."""
        end = self.edge(retired, up=True) if retired is not None else NOT_RETIRED
        key = (where, self.edge(deployed, up=False), end)
        self.spans[key] = self.spans.get(key, 0) + sign

    def open(self, where: Slice, state: DeviceState, p: Profile, since: float, sign: int) -> None:
        """A device's open interval from `since` in `state` joins (+1) or leaves (-1) the sums."""
        entry = self.opens.setdefault((where, state, p), OpenSums())
        entry.devices += sign
        entry.since_s += sign * since
        entry.since_bs += sign * business_seconds(since, p)
