"""Tasks for field agents (工单): opened by findings, closed only when the system verifies.

A finding opens a task for the device's field agent (the device's own, else its store's) with
the evidence and a suggested action; a finding of the same kind for a device that already has
an open task merges into it (occurrences + 1, latest evidence). A field agent starts work
(the device goes under repair) and asks to close; the task then waits in `verifying` until
the inspector sees the device healthy again for the task's kind, and only then is it closed.

    open → in_progress → verifying → closed
      └──────────────────┘ (close may be asked from open too)
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.db.hierarchy import DEVICE_HIERARCHY
from fleet_server.devices import tracker
from fleet_server.devices.states import DeviceState, Signal
from fleet_server.devices.tracker import Observation
from fleet_server.errors import TaskError
from fleet_server.inspection.detectors import Finding, FindingKind


class TaskStatus(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    VERIFYING = "verifying"
    CLOSED = "closed"


class Task(BaseModel):
    task_id: int
    device_id: str
    kind: str
    status: TaskStatus
    store_id: str | None
    agent_id: str | None
    confidence: float
    evidence: dict[str, Any]
    action_zh: str
    action_en: str
    occurrences: int
    opened_at: datetime
    updated_at: datetime
    started_at: datetime | None
    close_requested_at: datetime | None
    close_note: str | None
    closed_at: datetime | None
    verification: str | None
    device_state: str | None = None
    serial: str | None = None
    install_address: str | None = None
    install_lat: float | None = None
    install_lon: float | None = None


# The device states in which a task of each kind counts as fixed.
FIXED_WHEN: Final = {
    FindingKind.FAULTY: {DeviceState.IN_SERVICE, DeviceState.IDLE},
    FindingKind.LOST: {DeviceState.IN_SERVICE, DeviceState.IDLE, DeviceState.RETIRED},
    FindingKind.RELOCATED: {DeviceState.IN_SERVICE, DeviceState.IDLE},
    FindingKind.IDLE: {DeviceState.IN_SERVICE, DeviceState.RETIRED},
}
# What a newly opened task does to its device's state.
SIGNAL_OF: Final = {
    FindingKind.FAULTY: Signal.FAULT,
    FindingKind.LOST: Signal.LOST_DETECTED,
    FindingKind.RELOCATED: Signal.RELOCATED_DETECTED,
    FindingKind.IDLE: Signal.IDLE_DETECTED,
}

# A finding opens a task for its device's field agent (the device's own, else its store's), or
# merges into the device's open task of that kind.
_OPEN_OR_MERGE: Final = (
    "INSERT INTO tasks AS t (device_id, kind, store_id, agent_id, confidence, evidence, action_zh, action_en,"  # noqa: S608 - a constant join.
    " opened_at, updated_at)"
    " SELECT d.device_id, %(kind)s, COALESCE(m.store_id, d.store_id), COALESCE(d.agent_id, st.agent_id),"
    " %(confidence)s, %(evidence)s, %(zh)s, %(en)s, %(now)s, %(now)s"
    f" FROM {DEVICE_HIERARCHY} WHERE d.device_id = %(device)s"
    " ON CONFLICT (device_id, kind) WHERE status <> 'closed' DO UPDATE SET"
    " occurrences = t.occurrences + 1, evidence = EXCLUDED.evidence,"
    " confidence = EXCLUDED.confidence, updated_at = EXCLUDED.updated_at"
    " RETURNING (xmax = 0) AS inserted"
)
_SELECT: Final = (
    "SELECT t.*, d.state AS device_state, COALESCE(d.serial, d.reported_serial) AS serial, d.install_address,"
    " d.install_lat, d.install_lon FROM tasks t LEFT JOIN devices d USING (device_id)"
)


class TaskBook:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record(self, findings: list[Finding], now: datetime) -> tuple[int, int]:
        """Open a task per finding or merge it into the open one; returns (opened, merged)."""
        opened = merged = 0
        observations: list[Observation] = []
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            for f in sorted(findings, key=lambda f: (f.device_id, f.kind)):
                await cur.execute(
                    _OPEN_OR_MERGE,
                    {
                        "kind": f.kind.value,
                        "confidence": f.confidence,
                        "evidence": json.dumps(f.evidence, ensure_ascii=False),
                        "zh": f.action_zh,
                        "en": f.action_en,
                        "now": now,
                        "device": f.device_id,
                    },
                )
                row = await cur.fetchone()
                if row is None:
                    continue
                if row[0]:
                    opened += 1
                    observations.append(Observation(f.device_id, now, SIGNAL_OF[f.kind], f"inspection_{f.kind}"))
                else:
                    merged += 1
            await tracker.apply(cur, observations)
        return opened, merged

    async def find(
        self,
        *,
        status: TaskStatus | None = None,
        open_only: bool = False,
        agent_id: str | None = None,
        store_id: str | None = None,
        device_id: str | None = None,
        stores: frozenset[str] | None = None,
        limit: int = 500,
    ) -> list[Task]:
        """Tasks matching every filter given; `stores` keeps those of these stores only."""
        clauses: list[str] = ["true"]
        params: list[object] = []
        for column, value in (
            ("t.status", status),
            ("t.agent_id", agent_id),
            ("t.store_id", store_id),
            ("t.device_id", device_id),
        ):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(str(value))
        if open_only:
            clauses.append("t.status <> 'closed'")
        if stores is not None:
            clauses.append("t.store_id = ANY(%s)")
            params.append(sorted(stores))
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY t.opened_at DESC LIMIT %s",
                (*params, limit),
            )
            return [Task.model_validate(row) for row in await cur.fetchall()]

    async def open_counts(self) -> dict[str, int]:
        """Tasks not yet closed, by kind."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT kind, count(*) FROM tasks WHERE status <> 'closed' GROUP BY kind")
            return {kind: int(n) for kind, n in await cur.fetchall()}

    async def get(self, task_id: int) -> Task:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"{_SELECT} WHERE t.task_id = %s", (task_id,))
            row = await cur.fetchone()
        if row is None:
            raise TaskError("TASK_NOT_FOUND", f"task {task_id} not found", f"工单 {task_id} 不存在")
        return Task.model_validate(row)

    async def assign(self, task_id: int, agent_id: str, now: datetime) -> Task:
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM field_agents WHERE agent_id = %s", (agent_id,))
            if await cur.fetchone() is None:
                raise TaskError("AGENT_NOT_FOUND", f"field agent {agent_id} not found", f"经纪人 {agent_id} 不存在")
        await self._move(task_id, {TaskStatus.OPEN, TaskStatus.IN_PROGRESS}, "agent_id = %s", (agent_id,), now)
        return await self.get(task_id)

    async def start(self, task_id: int, now: datetime) -> Task:
        """The field agent is at it: the device is under repair from now."""
        task = await self._move(task_id, {TaskStatus.OPEN}, "status = 'in_progress', started_at = %s", (now,), now)
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await tracker.apply(
                cur, [Observation(task.device_id, now, Signal.REPAIR_STARTED, f"task_{task_id}_started")]
            )
        return await self.get(task_id)

    async def request_close(self, task_id: int, note: str, now: datetime) -> Task:
        """Asked to close: the task waits for the system to verify the device."""
        await self._move(
            task_id,
            {TaskStatus.OPEN, TaskStatus.IN_PROGRESS},
            "status = 'verifying', close_requested_at = %s, close_note = %s,"
            " verification = 'waiting for the device to be verified healthy'",
            (now, note),
            now,
        )
        return await self.get(task_id)

    async def _move(
        self, task_id: int, allowed: set[TaskStatus], assignments: str, params: tuple[object, ...], now: datetime
    ) -> Task:
        task = await self.get(task_id)
        if task.status not in allowed:
            raise TaskError(
                "TASK_STATE",
                f"task {task_id} is {task.status}; this needs one of {', '.join(sorted(allowed))}",
                f"工单 {task_id} 当前状态为 {task.status}，不能执行此操作",
            )
        async with self._pool.connection() as conn:
            await conn.execute(
                f"UPDATE tasks SET {assignments}, updated_at = %s WHERE task_id = %s",  # noqa: S608 - fixed text.
                (*params, now, task_id),
            )
        return task

    async def verify(self, now: datetime) -> list[int]:
        """Close every verifying task whose device is fixed for the task's kind; returns their ids."""
        closed: list[int] = []
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "SELECT t.task_id, t.kind, d.state FROM tasks t JOIN devices d USING (device_id)"
                " WHERE t.status = 'verifying' FOR UPDATE OF t"
            )
            for task_id, kind, state in await cur.fetchall():
                fixed = state is not None and DeviceState(state) in FIXED_WHEN[FindingKind(kind)]
                note = (
                    f"verified: device {state} at {now.isoformat(timespec='seconds')}"
                    if fixed
                    else f"waiting: device is {state or 'unknown'}"
                )
                await cur.execute(
                    "UPDATE tasks SET verification = %s, updated_at = %s,"
                    " status = CASE WHEN %s THEN 'closed' ELSE status END,"
                    " closed_at = CASE WHEN %s THEN %s ELSE closed_at END WHERE task_id = %s",
                    (note, now, fixed, fixed, now, task_id),
                )
                if fixed:
                    closed.append(task_id)
        return closed
