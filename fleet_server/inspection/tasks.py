"""Tasks for field agents (工单): opened by findings, closed only when the system verifies.

A finding opens a task for the device's field agent (the device's own, else its store's) with
the evidence and a suggested action; a finding of the same kind for a device that already has
an open task merges into it (occurrences + 1, latest evidence). A field agent starts work
(the device goes under repair) and asks to close; the task then waits in `verifying` until
the inspector sees the device healthy again for the task's kind, and only then is it closed.
A device retired for good (lost, stolen, scrapped) has its open tasks closed with it. The
statuses and rules are in `rules`, the SQL in `queries`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, LiteralString

from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.db.fetch import fetch_model, fetch_models, fetch_row, fetch_rows
from fleet_server.db.hierarchy import WHOLE_FLEET, Reach, reach_params
from fleet_server.devices import rollups, tracker
from fleet_server.devices.states import DeviceState, Signal
from fleet_server.devices.tracker import Observation
from fleet_server.errors import TaskError
from fleet_server.inspection import queries
from fleet_server.inspection.detectors import Finding, FindingKind
from fleet_server.inspection.rules import FIXED_WHEN, REPAIRS, SIGNAL_OF, SLA_H, CancelReason, TaskStatus
from fleet_server.lifecycle import queries as lifecycle_queries
from fleet_server.lifecycle.stages import Action, Stage
from fleet_server.notify.outbox import queue_task


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
    due_at: datetime | None = None
    escalated_at: datetime | None = None
    cancel_reason: str | None = None
    cancelled_by: str | None = None
    device_state: str | None = None
    serial: str | None = None
    install_address: str | None = None
    install_lat: float | None = None
    install_lon: float | None = None


class RetireReason(StrEnum):
    LOST = "lost"  # 遗失: gone for good
    STOLEN = "stolen"  # 被盗
    SCRAPPED = "scrapped"  # 报废: broken beyond repair


RETIRE_REASONS_ZH: Final = {RetireReason.LOST: "遗失", RetireReason.STOLEN: "被盗", RetireReason.SCRAPPED: "报废"}


class Retired(BaseModel):
    device_id: str
    reason: RetireReason
    at: datetime
    previous_state: str | None
    closed_tasks: list[int]


class TaskBook:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record(self, findings: list[Finding], now: datetime) -> tuple[int, int]:
        """Open a task per finding or merge it into the open one, except findings a false alarm
        holds back; returns (opened, merged)."""
        opened = merged = 0
        observations: list[Observation] = []
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(queries.SUPPRESSED, (sorted({f.device_id for f in findings}), now))
            held = {(device, kind) for device, kind in await cur.fetchall()}
            for f in sorted(findings, key=lambda f: (f.device_id, f.kind)):
                if (f.device_id, f.kind.value) in held:
                    continue
                await cur.execute(
                    queries.OPEN_OR_MERGE,
                    {
                        "kind": f.kind.value,
                        "confidence": f.confidence,
                        "evidence": json.dumps(f.evidence, ensure_ascii=False),
                        "zh": f.action_zh,
                        "en": f.action_en,
                        "now": now,
                        "due": now + timedelta(hours=SLA_H[f.kind]),
                        "device": f.device_id,
                    },
                )
                row = await cur.fetchone()
                if row is None:
                    continue
                if row[0]:
                    opened += 1
                    await queue_task(cur, int(row[1]), "task.opened", now)
                    if (signal := SIGNAL_OF.get(f.kind)) is not None:
                        observations.append(Observation(f.device_id, now, signal, f"inspection_{f.kind}"))
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
        reach: Reach = WHOLE_FLEET,
        limit: int = 500,
    ) -> list[Task]:
        """Tasks matching every filter given, within `reach` (their stores' as opened)."""
        params = {
            "status": status.value if status is not None else None,
            "agent": agent_id,
            "store": store_id,
            "device": device_id,
            "open_only": open_only,
            **reach_params(reach),
            "limit": limit,
        }
        return await fetch_models(self._pool, Task, queries.FIND_TASKS, params)

    async def open_counts(self) -> dict[str, int]:
        """Tasks not yet closed, by kind."""
        return {kind: int(n) for kind, n in await fetch_rows(self._pool, queries.OPEN_COUNTS)}

    async def one(self, task_id: int, *, reach: Reach) -> Task | None:
        """The task, if it is within `reach` (its store's as opened), else None."""
        return await fetch_model(self._pool, Task, queries.TASK_WITHIN, {"id": task_id, **reach_params(reach)})

    async def get(self, task_id: int) -> Task:
        task = await fetch_model(self._pool, Task, queries.TASK, (task_id,))
        if task is None:
            raise TaskError("TASK_NOT_FOUND", f"task {task_id} not found", f"工单 {task_id} 不存在")
        return task

    async def assign(self, task_id: int, agent_id: str, now: datetime) -> Task:
        if await fetch_row(self._pool, queries.AGENT_KNOWN, (agent_id,)) is None:
            raise TaskError("AGENT_NOT_FOUND", f"field agent {agent_id} not found", f"经纪人 {agent_id} 不存在")
        before = self._allowed(await self.get(task_id), {TaskStatus.OPEN, TaskStatus.IN_PROGRESS})
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(queries.ASSIGN, (agent_id, now, task_id))
            if before.agent_id != agent_id:  # the new agent is told, in the same transaction
                await queue_task(cur, task_id, "task.assigned", now, to_agent=agent_id)
        return await self.get(task_id)

    async def escalate(self, now: datetime) -> list[int]:
        """Mark every open task past its due time escalated, once, and queue the news for its
        store's channels and ops, in one transaction; returns their ids."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(queries.ESCALATE, (now, now))
            escalated = sorted(int(row[0]) for row in await cur.fetchall())
            for task_id in escalated:
                await queue_task(cur, task_id, "task.escalated", now)
        return escalated

    async def cancel(
        self, task_id: int, reason: CancelReason, note: str, *, by: str, now: datetime, hold_days: float
    ) -> Task:
        """Close a task that needs no work, with the reason; a false alarm also holds the same
        finding of the same device back for `hold_days`. The device's state is its own: a
        device a finding made faulty leaves that state when it is verified healthy."""
        task = self._allowed(await self.get(task_id), {TaskStatus.OPEN, TaskStatus.IN_PROGRESS, TaskStatus.VERIFYING})
        why = f"cancelled ({reason.value}) by {by}" + (f": {note}" if note else "")
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(queries.CANCEL, (reason.value, by, why, now, now, task_id))
            if reason is CancelReason.FALSE_ALARM:
                until = now + timedelta(days=hold_days)
                await cur.execute(queries.SUPPRESS, (task.device_id, task.kind, until, why, by, task_id, now))
        return await self.get(task_id)

    async def start(self, task_id: int, now: datetime) -> Task:
        """The field agent is at it: a faulty device is under repair from now (work on anything
        else, a printer or a lost device, is no repair: `rules.REPAIRS`)."""
        task = await self._move(task_id, {TaskStatus.OPEN}, queries.START, (now, now, task_id))
        if task.kind not in REPAIRS:
            return await self.get(task_id)
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await tracker.apply(
                cur, [Observation(task.device_id, now, Signal.REPAIR_STARTED, f"task_{task_id}_started")]
            )
        return await self.get(task_id)

    async def request_close(self, task_id: int, note: str, now: datetime) -> Task:
        """Asked to close: the task waits for the system to verify the device."""
        await self._move(
            task_id, {TaskStatus.OPEN, TaskStatus.IN_PROGRESS}, queries.REQUEST_CLOSE, (now, note, now, task_id)
        )
        return await self.get(task_id)

    async def _move(
        self, task_id: int, allowed: set[TaskStatus], update: LiteralString, params: tuple[object, ...]
    ) -> Task:
        """Run `update` on the task if its status is one of `allowed`; the task as it was."""
        task = self._allowed(await self.get(task_id), allowed)
        async with self._pool.connection() as conn:
            await conn.execute(update, params)
        return task

    @staticmethod
    def _allowed(task: Task, allowed: set[TaskStatus]) -> Task:
        if task.status not in allowed:
            raise TaskError(
                "TASK_STATE",
                f"task {task.task_id} is {task.status}; this needs one of {', '.join(sorted(allowed))}",
                f"工单 {task.task_id} 当前状态为 {task.status}，不能执行此操作",
            )
        return task

    async def retire(self, device_id: str, reason: RetireReason, note: str, *, by: str, now: datetime) -> Retired:
        """Take a device out of service for good (lost, stolen, scrapped): retired from `now`, so
        out of the deployed figures from that moment, and every task of it still open closed
        (there is nothing left to verify). One transaction; a retired device stays retired."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            previous, closed = await retire_in(cur, device_id, reason.value, note, by=by, now=now)
            stage = Stage.SCRAPPED if reason is RetireReason.SCRAPPED else Stage.LOST
            await cur.execute(lifecycle_queries.SET_STAGE, (stage.value, now, device_id))
            action = Action.SCRAP if stage is Stage.SCRAPPED else Action.LOSE
            detail = json.dumps({"reason": reason.value, "note": note, "closed_tasks": closed})
            await cur.execute(
                lifecycle_queries.LOG_STAGE, (device_id, now, stage.value, None, action.value, by, detail)
            )
        return Retired(device_id=device_id, reason=reason, at=now, previous_state=previous, closed_tasks=closed)

    async def verify(self, now: datetime) -> list[int]:
        """Close every verifying task whose device is fixed for the task's kind; returns their ids."""
        closed: list[int] = []
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(queries.VERIFYING)
            for task_id, kind, state in await cur.fetchall():
                fixed = state is not None and DeviceState(state) in FIXED_WHEN[FindingKind(kind)]
                note = (
                    f"verified: device {state} at {now.isoformat(timespec='seconds')}"
                    if fixed
                    else f"waiting: device is {state or 'unknown'}"
                )
                await cur.execute(queries.VERIFIED, (note, now, fixed, fixed, now, task_id))
                if fixed:
                    closed.append(task_id)
        return closed


async def retire_in(
    cur: AsyncCursor[Any], device_id: str, reason: str, note: str, *, by: str, now: datetime
) -> tuple[str | None, list[int]]:
    """`TaskBook.retire` in the caller's transaction (also the lifecycle's return, swap, scrap and
    loss): the device's state before, and the tasks closed."""
    await rollups.lock_shared(cur)  # before the device row, as every writer of the rollups
    await cur.execute(queries.DEVICE_STATE, (device_id,))
    row = await cur.fetchone()
    if row is None:
        raise TaskError("DEVICE_NOT_FOUND", f"device {device_id} not found", f"设备 {device_id} 不存在")
    if row[0] == DeviceState.RETIRED:
        raise TaskError("DEVICE_RETIRED", f"device {device_id} is retired already", f"设备 {device_id} 已退役")
    detail = {"reason": reason, "note": note, "by": by}
    await tracker.apply(cur, [Observation(device_id, now, Signal.RETIRE, f"retired_{reason}", detail)])
    why = f"closed: device retired ({reason}) by {by}" + (f": {note}" if note else "")
    await cur.execute(queries.CLOSE_FOR_RETIRED, (now, now, why, device_id))
    return row[0], sorted(int(r[0]) for r in await cur.fetchall())
