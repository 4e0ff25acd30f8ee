"""入库: devices into stock from a CSV of serial numbers and models (what the factory's packing
list gives), checked row by row like the registry import: a dry run reports, a real run applies
the good rows in one transaction and lists the bad ones.

    device_id,serial,model
    SPK-0001,HD2026110001,HD-S1

A device already in stock is left as it is; one in the registry (bound to a merchant, placed in
a store) or anywhere else in its life is refused (return it first). A device that connected
before it was stocked (a switch-on at the factory) keeps its row and history and goes into
stock: the time it counted as deployed ends there, and begins again at its install.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols.fields import unstorable
from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.db.fetch import fetch_rows
from fleet_server.devices import rollups, tracker
from fleet_server.devices.importer import RowReport, read_table
from fleet_server.devices.states import DeviceState, Signal
from fleet_server.devices.tracker import Observation
from fleet_server.lifecycle import queries
from fleet_server.lifecycle.stages import Stage

COLUMNS: Final = ("device_id", "serial", "model")
_TEXT: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class StockReport(BaseModel):
    dry_run: bool
    rows: int
    valid: int
    invalid: int
    applied: int  # devices put into stock
    unchanged: int  # in stock already
    problems: list[RowReport]


def _check(values: dict[str, str]) -> list[str]:
    errors = []
    if not DEVICE_ID_PATTERN.fullmatch(values.get("device_id", "")):
        errors.append(f"device_id {values.get('device_id')!r} is not a device id (letters, digits, _ . -; 1-64)")
    for name in ("serial", "model"):
        value = values.get(name, "")
        if not _TEXT.fullmatch(value):
            errors.append(f"{name} {value!r} must be 1-64 letters, digits, _ . -")
    if any(unstorable(v) for v in values.values()):
        errors.append("a value holds characters that cannot be stored (NUL or an unpaired surrogate)")
    return errors


async def stock(pool: AsyncConnectionPool, text: str, *, dry_run: bool, by: str, now: datetime) -> StockReport:
    rows = read_table(text, COLUMNS, COLUMNS)
    problems: dict[int, list[str]] = {}
    first_of: dict[tuple[str, str], int] = {}
    for line, values in rows:
        errors = _check(values)
        for key in ("device_id", "serial"):
            seen = first_of.setdefault((key, values.get(key, "")), line)
            if seen != line:
                errors.append(f"{key} {values.get(key)} is on line {seen} too")
        if errors:
            problems[line] = errors
    good = [(line, v) for line, v in rows if line not in problems]
    params = {"ids": [v["device_id"] for _, v in good], "serials": [v["serial"] for _, v in good]}
    known = await fetch_rows(pool, queries.KNOWN, params)
    by_id = {r[0]: r for r in known}
    serial_owner = {r[1]: r[0] for r in known if r[1]}
    unchanged = 0
    todo: list[tuple[int, dict[str, str]]] = []
    for line, values in good:
        device_id, serial = values["device_id"], values["serial"]
        errors = []
        owner = serial_owner.get(serial)
        if owner is not None and owner != device_id:
            errors.append(f"serial {serial} belongs to device {owner}")
        row = by_id.get(device_id)
        if row is not None and row[2] == Stage.IN_STOCK and row[1] == serial:
            unchanged += 1
            continue
        if row is not None and row[2] is not None:
            errors.append(f"device {device_id} is {row[2]}: only a new device, or one restocked, goes into stock")
        elif row is not None and row[4]:
            errors.append(f"device {device_id} is in the registry (bound or placed in a store): return it first")
        if errors:
            problems[line] = errors
        else:
            todo.append((line, values))
    if not dry_run and todo:
        # Seen before it was registered (switched on at the factory or the warehouse): the time it
        # counted as deployed ends now; installed, it begins again (`lifecycle.book`).
        switched_on = [
            Observation(v["device_id"], now, Signal.RETIRE, "stocked", {"by": by})
            for _, v in todo
            if v["device_id"] in by_id and by_id[v["device_id"]][3] not in (None, DeviceState.RETIRED)
        ]
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await rollups.lock_shared(cur)  # before the device rows, as every writer of the rollups
            await tracker.apply(cur, switched_on)
            await cur.executemany(queries.STOCK, [(v["device_id"], v["serial"], v["model"], now) for _, v in todo])
            log = [(v["device_id"], now, Stage.IN_STOCK.value, None, "stock", by, "{}") for _, v in todo]
            await cur.executemany(queries.LOG_STAGE, log)
    report = [
        RowReport(line=line, device_id=dict(rows)[line].get("device_id"), errors=e) for line, e in problems.items()
    ]
    return StockReport(
        dry_run=dry_run,
        rows=len(rows),
        valid=len(todo) + unchanged,
        invalid=len(problems),
        applied=0 if dry_run else len(todo),
        unchanged=unchanged,
        problems=sorted(report, key=lambda r: r.line),
    )
