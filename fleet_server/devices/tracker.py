"""Applying signals to devices: the state machine against the database.

`fold()` is the pure part: a device's state and clean-report streak, plus its observations in
time order, give the transitions. `apply()` does it for a batch of devices in the caller's
transaction, with the devices' rows locked in id order (so ingest processes sharing the stream
never deadlock), and stores every transition with its cause.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from psycopg import AsyncCursor

from fleet_server.db.batch import columns, copy_rows
from fleet_server.devices import queries, rollups, spans
from fleet_server.devices.ledger import Profile, Slice
from fleet_server.devices.parts import VERIFY_CLEAN_REPORTS
from fleet_server.devices.states import DeviceState, Signal, next_state

# The lifecycle's stages before install (`lifecycle.stages.UNDEPLOYED`, pinned by a test): a
# device there moves no operational state, whatever it sends.
UNDEPLOYED_STAGES: Final = frozenset({"in_stock", "allocated"})

# A device is verified healthy after this many clean health reports in a row (parts.py says why).
CLEAN_REPORTS_TO_VERIFY = VERIFY_CLEAN_REPORTS


@dataclass(frozen=True, slots=True)
class Observation:
    device_id: str
    at: datetime
    signal: Signal
    cause: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transition:
    device_id: str
    at: datetime
    state: DeviceState
    previous: DeviceState | None
    cause: str
    detail: dict[str, Any]


@dataclass(slots=True)
class DeviceCursor:
    state: DeviceState | None
    streak: int


def fold(
    device: DeviceCursor, observations: list[Observation], *, clean_reports: int = CLEAN_REPORTS_TO_VERIFY
) -> list[Transition]:
    """Run `observations` (one device, time order) through the machine; `device` is updated."""
    out: list[Transition] = []
    for obs in observations:
        signal = obs.signal
        if signal is Signal.HEALTHY:
            # A clean report counts towards verification; the machine sees HEALTHY only once the
            # streak is long enough, and until then the report is just a sign of life. Counting
            # stops there, so a steady healthy device's row is not rewritten on every report.
            device.streak = min(device.streak + 1, clean_reports)
            if device.streak < clean_reports:
                signal = Signal.SEEN
        elif signal is Signal.FAULT:
            device.streak = 0
        target = next_state(device.state, signal)
        if target is None:
            continue
        out.append(Transition(obs.device_id, obs.at, target, device.state, obs.cause, obs.detail))
        device.state = target
    return out


async def apply(
    cur: AsyncCursor[Any], observations: list[Observation], *, clean_reports: int = CLEAN_REPORTS_TO_VERIFY
) -> list[Transition]:
    """Apply a batch of observations in the caller's transaction; returns the transitions made.
    The figure rollups take what the transitions close, in the same transaction (rollups.py)."""
    if not observations:
        return []
    by_device: dict[str, list[Observation]] = defaultdict(list)
    for obs in sorted(observations, key=lambda o: o.at):
        by_device[obs.device_id].append(obs)
    ids = sorted(by_device)
    await rollups.lock_shared(cur)
    held = await rollups.clock(cur)
    await cur.execute(queries.LOCK_STATES, {"ids": ids, "fleet_offset": held.offset_min if held else 0})
    rows = {row[0]: row for row in await cur.fetchall()}
    ledger = held.ledger() if held else None
    late: datetime | None = None
    transitions: list[Transition] = []
    updates: list[tuple[object, ...]] = []
    started: dict[str, datetime | None] = {}  # devices whose deployed span begins in this batch
    for device_id in ids:
        row = rows.get(device_id)
        # Not registered and never seen (ingest inserts the row before applying), or on a shelf
        # (in stock, allocated): deployed at install, not when switched on in the warehouse.
        if row is None or row[19] in UNDEPLOYED_STAGES:
            continue
        cursor = DeviceCursor(DeviceState(row[1]) if row[1] else None, row[2])
        before = (cursor.state, cursor.streak)
        made = fold(cursor, by_device[device_id], clean_reports=clean_reports)
        transitions.extend(made)
        rolled = _rolled(row)
        if any(spans.starts_span(t.previous, t.state) for t in made):
            started[device_id] = rolled.retired_at  # the previous span's end, before roll() moves on
        if made and ledger is not None and held is not None:
            if row[7] is None and row[1] is not None:
                late = _earliest(late, made[0].at)  # time the rollups never held: rebuild
            elif not rollups.roll(ledger, rolled, [(t.at, t.state, t.previous) for t in made], held.checkpoint):
                late = _earliest(late, made[0].at)
        if made or before != (cursor.state, cursor.streak):
            since = made[-1].at if made else None
            known = row[7] is not None or (made and ledger is not None)
            w, p = rolled.where, rolled.profile
            updates.append(
                (
                    cursor.state.value if cursor.state else None,
                    since,
                    cursor.streak,
                    *((w.store, w.model, w.firmware, p.off_s, p.open_s, p.close_s) if known else (None,) * 6),
                    rolled.deployed_from,
                    rolled.retired_at,
                    rolled.run_fault_at,
                    device_id,
                )
            )
    await _store(cur, updates, transitions)
    if ledger is not None and held is not None:
        await rollups.write(cur, ledger)
        await spans.count_started(cur, started, held)
    if late is not None:
        await rollups.mark_dirty(cur, late)
    return transitions


async def _store(cur: AsyncCursor[Any], updates: list[tuple[object, ...]], transitions: list[Transition]) -> None:
    """The devices' new states and rollup fields, and the transitions with their causes."""
    if updates:
        await cur.execute(queries.SET_STATES, columns(updates, 13))
    if transitions:
        await copy_rows(
            cur,
            queries.COPY_TRANSITIONS,
            (
                (
                    t.device_id,
                    t.at,
                    t.state.value,
                    t.previous.value if t.previous else None,
                    t.cause,
                    json.dumps(t.detail),
                )
                for t in transitions
            ),
        )


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else min(a, b)


def _rolled(row: tuple[Any, ...]) -> rollups.Rolled:
    """A LOCK_STATES row as the rollups hold the device (its slice now if never rolled)."""
    rolled = row[7] is not None
    where = Slice(*(row[7:10] if rolled else row[13:16]))
    profile = Profile(*(row[10:13] if rolled else row[16:19]))
    since = row[3].timestamp() if row[3] is not None else None
    state = DeviceState(row[1]) if row[1] else None
    # The current run as the row keeps it: begun with a fault at run_fault_at, or not.
    return rollups.Rolled(where, profile, state, since, row[4], row[5], run_at=row[6], fault_at=row[6])
