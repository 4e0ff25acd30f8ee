"""HTTP routes of field agents' tasks: list (a field agent's own stores only), one, assign,
start, and ask to close (the task closes once the system verifies the device)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, Reach, ReachDep, TaskAssigner, TaskReader, TaskWorker
from fleet_server.auth.roles import Principal
from fleet_server.errors import ApiError
from fleet_server.http.errors import NOT_FOUND
from fleet_server.http.services import provide
from fleet_server.inspection.rules import TaskStatus
from fleet_server.inspection.tasks import Task, TaskBook

TasksDep = Annotated[TaskBook, Depends(provide(TaskBook))]
TaskId = Annotated[int, Path(ge=1)]

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], responses=AUTH_ERRORS)


class AssignBody(BaseModel):
    agent_id: str = Field(min_length=1, max_length=64)


class CloseBody(BaseModel):
    note: str = Field(default="", max_length=500)


@router.get("", summary="Tasks for field agents, newest first; a field agent's own stores only")
async def list_tasks(
    principal: TaskReader,
    tasks: TasksDep,
    status: TaskStatus | None = None,
    open_only: bool = False,
    agent_id: Annotated[str | None, Query(max_length=64)] = None,
    store_id: Annotated[str | None, Query(max_length=64)] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[Task]:
    return await tasks.find(
        status=status,
        open_only=open_only,
        agent_id=agent_id,
        store_id=store_id,
        device_id=device_id,
        reach=principal.reach(),
        limit=limit,
    )


async def _within_reach(tasks: TaskBook, reach: Reach, principal: Principal, task_id: int) -> Task:
    missing = ApiError(404, "TASK_NOT_FOUND", f"task {task_id} not found", f"工单 {task_id} 不存在")
    return await reach.found(
        principal, await tasks.one(task_id, reach=principal.reach()), "task", str(task_id), missing
    )


@router.get("/{task_id}", summary="One task", responses=NOT_FOUND)
async def get_task(principal: TaskReader, tasks: TasksDep, reach: ReachDep, task_id: TaskId) -> Task:
    return await _within_reach(tasks, reach, principal, task_id)


@router.post("/{task_id}/assign", summary="Give the task to a field agent", responses=NOT_FOUND)
async def assign_task(
    principal: TaskAssigner, tasks: TasksDep, audit: AuditDep, task_id: TaskId, body: AssignBody
) -> Task:
    task = await tasks.assign(task_id, body.agent_id, datetime.now(tz=UTC))
    await audit(principal, "task.assign", str(task_id), detail=body.model_dump())
    return task


@router.post("/{task_id}/start", summary="The field agent starts work: the device is under repair", responses=NOT_FOUND)
async def start_task(principal: TaskWorker, tasks: TasksDep, reach: ReachDep, audit: AuditDep, task_id: TaskId) -> Task:
    await _within_reach(tasks, reach, principal, task_id)
    task = await tasks.start(task_id, datetime.now(tz=UTC))
    await audit(principal, "task.start", str(task_id), detail={"device_id": task.device_id})
    return task


@router.post(
    "/{task_id}/close", summary="Ask to close: the task closes once the device is verified", responses=NOT_FOUND
)
async def close_task(
    principal: TaskWorker, tasks: TasksDep, reach: ReachDep, audit: AuditDep, task_id: TaskId, body: CloseBody
) -> Task:
    await _within_reach(tasks, reach, principal, task_id)
    task = await tasks.request_close(task_id, body.note, datetime.now(tz=UTC))
    detail = {"device_id": task.device_id, "note": body.note, "status": task.status.value}
    await audit(principal, "task.close", str(task_id), detail=detail)
    return task
