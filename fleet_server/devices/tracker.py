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
from typing import Any

from psycopg import AsyncCursor

from fleet_server.db.batch import columns, copy_rows
from fleet_server.devices import queries
from fleet_server.devices.parts import VERIFY_CLEAN_REPORTS
from fleet_server.devices.states import DeviceState, Signal, next_state

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
    """Apply a batch of observations in the caller's transaction; returns the transitions made."""
    if not observations:
        return []
    by_device: dict[str, list[Observation]] = defaultdict(list)
    for obs in sorted(observations, key=lambda o: o.at):
        by_device[obs.device_id].append(obs)
    ids = sorted(by_device)
    await cur.execute(
        queries.LOCK_STATES,
        (ids,),
    )
    current = {row[0]: DeviceCursor(DeviceState(row[1]) if row[1] else None, row[2]) for row in await cur.fetchall()}
    transitions: list[Transition] = []
    updates: list[tuple[object, ...]] = []
    for device_id in ids:
        cursor = current.get(device_id)
        if cursor is None:
            continue  # not registered and never seen: ingest inserts the row before applying
        before = (cursor.state, cursor.streak)
        made = fold(cursor, by_device[device_id], clean_reports=clean_reports)
        transitions.extend(made)
        if made or before != (cursor.state, cursor.streak):
            since = made[-1].at if made else None
            updates.append((cursor.state.value if cursor.state else None, since, cursor.streak, device_id))
    if updates:
        await cur.execute(
            queries.SET_STATES,
            columns(updates, 4),
        )
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
    return transitions
