"""The figure rollups kept as history is written (migration 0014; docs/architecture.md, "Figures
from rollups").

- `roll()`: the state tracker's part, in its transaction: each transition moves the piece of
  the state it ends into the rows and the device into its new state's open sums, with the
  failures and repairs it makes.
- `checkpoint()`: every hour, each device's open piece up to the hour goes into the rows, so an
  open piece never starts before the last whole hour (windows from a whole hour need no cut).
- `rebuild()`: everything again from raw history (the first build, `haodian fleet recompute`,
  and after a transition written before the checkpoint: late or backdated history).
- `move_resliced()`: a device rebound to another store, updated to other firmware, or whose
  merchant's hours changed has its rolled time moved to where it now belongs.
- `spans`: the deployed spans (a device may have several: installed again after a return) and
  the power-on counts of the days they touch.
- `seal()`: the local days that have ended summed again by store alone (migration 0016), so the
  figures over the hierarchy read a sixth of the rows; triggers keep them equal to the day rows.

The tracker takes the rollup lock shared, the others exclusive (a PostgreSQL advisory lock for
the transaction), so they never interleave; every transaction takes it before it locks a device
row (the rebuild and the moves lock device rows after it), so the two never deadlock. The
arithmetic is `ledger.py`'s; the SQL is in `rollup_queries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import structlog
from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool

from fleet_server.db.batch import columns
from fleet_server.devices import delivery_rollups, spans
from fleet_server.devices import rollup_queries as q
from fleet_server.devices.ledger import DAY_S, Grain, Ledger, Profile, Slice, day_start, local_day
from fleet_server.devices.states import FAILURE_STATES, UP_STATES, DeviceState

log = structlog.get_logger(__name__)

ROLLUP_LOCK: Final = 0x4844_0025
# Hour rows are kept this long (the dashboard's hour-exact 24 hours, and the day before).
HOURS_KEPT: Final = timedelta(days=3)
_LOCK_SHARED: Final = "SELECT pg_advisory_xact_lock_shared(%s)"
_LOCK: Final = "SELECT pg_advisory_xact_lock(%s)"
# The bulk statements are planned expensive: JIT compiling them costs more than it saves (1.7 s
# of a 2.5 s rebuild of 2,000 devices), and their sorts want more than the default work_mem.
FOR_BULK: Final = "SET LOCAL jit = off; SET LOCAL work_mem = '256MB'"


@dataclass(frozen=True, slots=True)
class Clock:
    checkpoint: float  # epoch seconds: every device's time before it is in the rows
    hours_from: float
    offset_min: int
    dirty_from: datetime | None
    deliveries_offset_min: int | None = None  # None: the delivery rollups are not built
    sealed_through: date | None = None  # the last local day summed by store (migration 0016)

    def answers(self, fleet_offset_min: int) -> bool:
        """Whether the rollups hold what the figures at this offset need."""
        return (
            self.offset_min == fleet_offset_min
            and self.dirty_from is None
            and self.deliveries_offset_min == fleet_offset_min
        )

    def ledger(self) -> Ledger:
        return Ledger(offset_s=60.0 * self.offset_min, hours_from=self.hours_from)


async def clock(cur: AsyncCursor[Any]) -> Clock | None:
    """The rollups' clock, or None while they are not built."""
    await cur.execute(q.CLOCK)
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    return Clock(row[0].timestamp(), row[1].timestamp(), int(row[2]), row[3], row[4], row[5])


@dataclass(slots=True)
class Rolled:
    """A device as the rollups hold it: where its time is summed, and its current run."""

    where: Slice
    profile: Profile
    state: DeviceState | None
    since: float | None
    deployed_from: datetime | None = None
    retired_at: datetime | None = None
    # The last entry into a failure state from another, and the last into faulty from a
    # non-failure state: a repair counts when they are the same (the run began with a fault).
    run_at: datetime | None = None
    fault_at: datetime | None = None

    @property
    def run_fault_at(self) -> datetime | None:
        """When the current failure run began with a fault (what devices.run_fault_at keeps)."""
        return self.fault_at if self.fault_at is not None and self.fault_at == self.run_at else None


# A transition: when, into which state, from which (as recorded: history written late keeps
# the previous state it was written with, and the figures count failures and repairs by it).
Step = tuple[datetime, DeviceState, DeviceState | None]


def roll(ledger: Ledger, device: Rolled, transitions: list[Step], floor: float) -> bool:
    """Add `transitions` (time order) of one device: the pieces they close from `floor` on (the
    checkpoint: what is before it is in the rows already), their failures and repairs, and the
    open sums' moves; `device` is updated. False when a transition is before the piece it would
    close (late history: the rollups need a rebuild)."""
    in_order = True
    for at_dt, state, previous in transitions:
        at = at_dt.timestamp()
        before = device.state
        if before is not None and device.since is not None:
            u = max(device.since, floor)
            in_order &= at >= u
            ledger.add_interval(device.where, device.profile, before, u, at)
            ledger.open(device.where, before, device.profile, u, -1)
            if previous is DeviceState.RETIRED and state is not DeviceState.RETIRED:
                # Installed again: a new span, and the gap since the last one taken off once, so
                # a window that meets both counts the device (and a day both touch) once.
                if device.deployed_from is not None and device.retired_at is not None:
                    ledger.span(device.where, at_dt, device.retired_at, -1)
                device.deployed_from, device.retired_at = at_dt, None
                ledger.span(device.where, at_dt, None, +1)
        else:
            in_order &= at >= floor  # a first contact before the checkpoint: time it never held
            if device.deployed_from is None and state is not DeviceState.RETIRED:
                device.deployed_from = at_dt
                ledger.span(device.where, at_dt, None, +1)
        was_failure = previous in FAILURE_STATES
        if state in FAILURE_STATES and not was_failure:
            device.run_at = at_dt
            if state is DeviceState.FAULTY:
                device.fault_at = at_dt
                ledger.add_event(device.where, at, failures=1)
        elif was_failure and state in UP_STATES and device.run_fault_at is not None:
            fault_at = device.run_fault_at
            ledger.add_event(device.where, at, repairs=1, repair_s=(at_dt - fault_at).total_seconds())
        if state is DeviceState.RETIRED and device.retired_at is None:
            device.retired_at = at_dt
            if device.deployed_from is not None:
                ledger.span(device.where, device.deployed_from, None, -1)
                ledger.span(device.where, device.deployed_from, at_dt, +1)
        ledger.open(device.where, state, device.profile, max(at, floor), +1)
        device.state, device.since = state, at
    return in_order


async def write(cur: AsyncCursor[Any], ledger: Ledger) -> None:
    """Add what `ledger` holds to the rows and the open sums (keys sorted: no deadlocks)."""
    days = sorted(
        (bucket, w.store, w.model, w.firmware, *sums.values())
        for (grain, bucket, w), sums in ledger.rows.items()
        if grain is Grain.DAY
    )
    hours = sorted(
        (bucket, w.store, w.model, w.firmware, *sums.values())
        for (grain, bucket, w), sums in ledger.rows.items()
        if grain is Grain.HOUR
    )
    opens = sorted(
        (w.store, w.model, w.firmware, state.value, p.off_s, p.open_s, p.close_s, o.devices, o.since_s, o.since_bs)
        for (w, state, p), o in ledger.opens.items()
        if o.devices or o.since_s
    )
    if days:
        await cur.execute(q.ADD_DAYS, columns(days, 13))
    if hours:
        await cur.execute(q.ADD_HOURS, columns(hours, 13))
    if opens:
        await cur.execute(q.ADD_OPEN, columns(opens, 10))
    spans = sorted(
        (w.store, w.model, w.firmware, deployed, retired, n) for (w, deployed, retired), n in ledger.spans.items() if n
    )
    if spans:
        await cur.execute(q.ADD_SPANS, columns(spans, 6))


async def lock_shared(cur: AsyncCursor[Any]) -> None:
    await cur.execute(_LOCK_SHARED, (ROLLUP_LOCK,))


async def mark_dirty(cur: AsyncCursor[Any], since: datetime) -> None:
    log.warning("history written before the rollups' checkpoint; they will be rebuilt", since=since.isoformat())
    await cur.execute(q.MARK_DIRTY, (since,))


def _hour_floor(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


async def rebuild(
    pool: AsyncConnectionPool, now: datetime, *, fleet_offset_min: int, deliveries: bool = True
) -> datetime:
    """Every rollup again from raw history, up to the last whole hour before `now` (the delivery
    rollups too unless `deliveries` is false: they are exact whatever the state history does);
    returns the hour."""
    at = _hour_floor(now.astimezone(UTC))
    hours_from = at - HOURS_KEPT
    params = {
        "h": at.timestamp(),
        "hours_from": hours_from.timestamp(),
        "fleet_offset": fleet_offset_min,
        "at": at,
        "built": now,
    }
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(_LOCK, (ROLLUP_LOCK,))
        await delivery_rollups.lock(cur)
        await cur.execute(FOR_BULK)
        await cur.execute(q.UNSEAL)
        for statement in q.CLEAR:
            await cur.execute(statement)
        await cur.execute(q.UNROLL_SILENT)
        await cur.execute(q.REBUILD_DEVICES, params)
        await cur.execute(q.REBUILD_DAYS, params)
        await cur.execute(q.REBUILD_HOURS, params)
        await cur.execute(q.REOPEN, params)
        await cur.execute(spans.REBUILD_SEEN, params)
        await cur.execute(q.REBUILD_SPANS, params)
        await cur.execute(q.SET_CLOCK, {**params, "hours_from": hours_from})
        if deliveries:
            await delivery_rollups.rebuild(cur, offset_min=fleet_offset_min, hours_from=hours_from)
        else:  # kept as they are, but devices moved meanwhile (a move waits for this rebuild) moved
            await delivery_rollups.move(cur, offset_min=fleet_offset_min, hours_from=hours_from)
            await delivery_rollups.prune(cur, hours_from)
        await cur.execute(q.SEAL, (_sealable(at, fleet_offset_min),))
    log.info("figure rollups rebuilt from history", checkpoint=at.isoformat(), deliveries=deliveries)
    return at


async def checkpoint(pool: AsyncConnectionPool, now: datetime, *, fleet_offset_min: int) -> datetime | None:
    """Move every device's open piece up to the last whole hour into the rows; build the rollups
    first if they never were, rebuild them if late history made them dirty. The checkpoint
    now, or None when there was nothing to do."""
    async with pool.connection() as conn, conn.cursor() as cur:
        held = await clock(cur)
    at = _hour_floor(now.astimezone(UTC))
    deliveries = held is None or held.deliveries_offset_min != fleet_offset_min
    if held is None or held.dirty_from is not None or held.offset_min != fleet_offset_min:
        return await rebuild(pool, now, fleet_offset_min=fleet_offset_min, deliveries=deliveries)
    if deliveries:
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await delivery_rollups.lock(cur)
            await cur.execute(FOR_BULK)
            hours_kept = datetime.fromtimestamp(held.hours_from, tz=UTC)
            await delivery_rollups.rebuild(cur, offset_min=fleet_offset_min, hours_from=hours_kept)
    if at.timestamp() <= held.checkpoint:
        return None
    hours_from = max(datetime.fromtimestamp(held.hours_from, tz=UTC), at - HOURS_KEPT)
    params = {
        "c": held.checkpoint,
        "h": at.timestamp(),
        "hours_from": held.hours_from,
        "fleet_offset": fleet_offset_min,
        "at": at,
        "built": None,
    }
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(_LOCK, (ROLLUP_LOCK,))
        await cur.execute(FOR_BULK)
        await cur.execute(q.CHECKPOINT_HOURS, params)
        await cur.execute(q.CHECKPOINT_DAYS, params)
        await cur.execute(q.CLEAR[2])
        await cur.execute(q.REOPEN, params)
        await cur.execute(q.PRUNE_HOURS, (hours_from,))
        await delivery_rollups.prune(cur, hours_from)
        await cur.execute(q.SPANS_TO_DAYS, {"hours_from": hours_from.timestamp(), "fleet_offset": fleet_offset_min})
        await cur.execute(q.SET_CLOCK, {**params, "hours_from": hours_from})
    await seal(pool, at, held, fleet_offset_min=fleet_offset_min)
    return at


def _sealable(at: datetime, fleet_offset_min: int) -> date:
    """The last local day that ended at or before the checkpoint `at`."""
    return local_day(at.timestamp(), 60.0 * fleet_offset_min) - timedelta(days=1)


async def seal(pool: AsyncConnectionPool, at: datetime, held: Clock, *, fleet_offset_min: int) -> int:
    """Seal the local days ended by the checkpoint `at` (once a day some work, else nothing):
    under both locks exclusive, so no writer that read the old sealed day is still open. The
    days sealed."""
    through = _sealable(at, fleet_offset_min)
    if held.sealed_through is not None and through <= held.sealed_through:
        return 0
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(_LOCK, (ROLLUP_LOCK,))
        await delivery_rollups.lock(cur)
        await cur.execute(FOR_BULK)
        await cur.execute(q.SEAL, (through,))
        row = await cur.fetchone()
    days = int(row[0]) if row else 0
    if days:
        log.info("figure rollups sealed by store", through=through.isoformat(), days=days)
    return days


async def move_resliced(pool: AsyncConnectionPool, *, fleet_offset_min: int) -> int:
    """Devices whose slice or business hours changed since their time was rolled (rebound,
    updated, the merchant's hours changed): their rolled time, open sums and seen days moved to
    where they now belong, recomputed from their history. Returns how many moved."""
    # Looked for without the locks first: most rounds find nothing, and ingest need not wait.
    async with pool.connection() as conn, conn.cursor() as cur:
        await cur.execute(q.MOVED.removesuffix(q.LOCKED), {"fleet_offset": fleet_offset_min})
        states_moved = bool(await cur.fetchall())
        await cur.execute(delivery_rollups.MOVED.removesuffix(q.LOCKED))
        if not states_moved and not await cur.fetchall():
            return 0
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(_LOCK, (ROLLUP_LOCK,))
        await delivery_rollups.lock(cur)
        held = await clock(cur)
        if held is None or held.dirty_from is not None:
            return 0  # the rebuild to come puts every device where it belongs now
        if held.deliveries_offset_min is not None:
            hours_kept = datetime.fromtimestamp(held.hours_from, tz=UTC)
            announced = await delivery_rollups.move(cur, offset_min=held.deliveries_offset_min, hours_from=hours_kept)
            if announced:
                log.info("devices' deliveries moved to their new slice in the rollups", devices=announced)
        await cur.execute(q.MOVED, {"fleet_offset": fleet_offset_min})
        moved = await cur.fetchall()
        ledger = held.ledger()
        seen: list[tuple[Slice, Slice, date]] = []
        for device_id, store, model, firmware, off_s, open_s, close_s in moved:
            new = (Slice(store, model, firmware), Profile(off_s, open_s, close_s))
            old, days = await _history_into(cur, ledger, device_id, held, new)
            seen += [(old, new[0], day) for day in days]
            await cur.execute(q.SET_ROLLED, (store, model, firmware, off_s, open_s, close_s, device_id))
        await write(cur, ledger)
        await _move_seen(cur, seen)
    if moved:
        log.info("devices moved to their new slice in the figure rollups", devices=len(moved))
    return len(moved)


async def _history_into(
    cur: AsyncCursor[Any], ledger: Ledger, device_id: str, held: Clock, new: tuple[Slice, Profile]
) -> tuple[Slice, list[date]]:
    """One device's rolled time taken out of its old slice and put into `new`, recomputed from
    its history as the rollups hold it (every closed piece, the open one up to the checkpoint);
    returns the old slice and the days it is counted seen on."""
    await cur.execute(q.ROLLED_OF, (device_id,))
    row = await cur.fetchone()
    assert row is not None  # noqa: S101 - locked by MOVED a moment ago
    old = Slice(row[2], row[3], row[4])
    old_profile = Profile(row[5], row[6], row[7])
    await cur.execute(q.HISTORY_OF, (device_id,))
    history: list[Step] = [
        (at, DeviceState(state), DeviceState(previous) if previous else None)
        for state, previous, at in await cur.fetchall()
    ]
    for where, profile, sign in ((old, old_profile, -1), (*new, 1)):
        part = ledger.blank()
        device = Rolled(where, profile, None, None)
        roll(part, device, history, float("-inf"))
        if device.state is None or device.since is None:
            continue
        part.add_interval(where, profile, device.state, device.since, held.checkpoint)
        ledger.merge(part, sign)
        for key, n in part.spans.items():
            ledger.spans[key] = ledger.spans.get(key, 0) + sign * n
        ledger.open(where, device.state, profile, max(device.since, held.checkpoint), sign)
    await cur.execute(q.SEEN_DAYS_OF, (device_id,))
    offset_s = 60.0 * held.offset_min
    runs = list(spans.deployed_spans(history))
    days = [
        day
        for (day,) in await cur.fetchall()
        if any(
            s.timestamp() < day_start(day, offset_s) + DAY_S and (e is None or e.timestamp() > day_start(day, offset_s))
            for s, e in runs
        )
    ]
    return old, days


async def _move_seen(cur: AsyncCursor[Any], seen: list[tuple[Slice, Slice, date]]) -> None:
    """Seen device-days moved from the old slice to the new one."""
    rows: dict[tuple[date, Slice], int] = {}
    for old, new, day in seen:
        rows[day, old] = rows.get((day, old), 0) - 1
        rows[day, new] = rows.get((day, new), 0) + 1
    moves = sorted((day, w.store, w.model, w.firmware, n) for (day, w), n in rows.items() if n)
    if moves:
        await cur.execute(q.ADD_SEEN_COUNTS, columns(moves, 5))
