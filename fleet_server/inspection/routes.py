"""HTTP routes of field agents' tasks: list (a field agent's own stores only), one, assign,
start, and ask to close (the task closes once the system verifies the device); and retiring a
device for good, which closes its tasks and revokes its credentials."""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from fleet_server.auth.deps import (
    AUTH_ERRORS,
    AuditDep,
    Reach,
    ReachDep,
    RegistryWriter,
    TaskAssigner,
    TaskReader,
    TaskWorker,
)
from fleet_server.auth.roles import Principal
from fleet_server.errors import ApiError, IdentityError
from fleet_server.http.errors import NOT_FOUND
from fleet_server.http.params import DeviceIdPath
from fleet_server.http.services import provide
from fleet_server.identity.store import DeviceCredentials
from fleet_server.inspection.detectors import InspectionThresholds
from fleet_server.inspection.rules import CancelReason, TaskStatus
from fleet_server.inspection.site import NoteText, Site, SiteBook
from fleet_server.inspection.tasks import Retired, RetireReason, Task, TaskBook

TasksDep = Annotated[TaskBook, Depends(provide(TaskBook))]
TaskPolicyDep = Annotated[InspectionThresholds, Depends(provide(InspectionThresholds))]
SiteDep = Annotated[SiteBook, Depends(provide(SiteBook))]
CredentialsDep = Annotated[DeviceCredentials, Depends(provide(DeviceCredentials))]
TaskId = Annotated[int, Path(ge=1)]

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], responses=AUTH_ERRORS)
retire_router = APIRouter(prefix="/api/v1/registry/devices", tags=["registry"], responses=AUTH_ERRORS)


class AssignBody(BaseModel):
    agent_id: str = Field(min_length=1, max_length=64)


class CloseBody(BaseModel):
    note: str = Field(default="", max_length=500)


class CancelBody(BaseModel):
    reason: CancelReason
    note: str = Field(default="", max_length=500)


class NoteBody(BaseModel):
    text: NoteText


class Phone(BaseModel):
    phone: str


class RetireBody(BaseModel):
    reason: RetireReason
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


@router.post(
    "/{task_id}/cancel",
    summary="Cancel a task that needs no work, with the reason; a false alarm holds the same finding back a while",
    responses=NOT_FOUND,
)
async def cancel_task(
    principal: TaskWorker,
    tasks: TasksDep,
    reach: ReachDep,
    audit: AuditDep,
    policy: TaskPolicyDep,
    task_id: TaskId,
    body: CancelBody,
) -> Task:
    await _within_reach(tasks, reach, principal, task_id)
    now = datetime.now(tz=UTC)
    task = await tasks.cancel(
        task_id, body.reason, body.note, by=principal.login, now=now, hold_days=policy.false_alarm_hold_days
    )
    detail = {"device_id": task.device_id, "kind": task.kind, "reason": body.reason.value, "note": body.note}
    await audit(principal, "task.cancel", str(task_id), detail=detail)
    return task


@router.get(
    "/{task_id}/site",
    summary="On site: the merchant (contact masked), where the device was installed (map link), the task's notes",
    responses=NOT_FOUND,
)
async def task_site(principal: TaskReader, tasks: TasksDep, reach: ReachDep, site: SiteDep, task_id: TaskId) -> Site:
    await _within_reach(tasks, reach, principal, task_id)
    found = await site.site(task_id)
    if found is None:
        raise ApiError(404, "TASK_NOT_FOUND", f"task {task_id} has no device", f"工单 {task_id} 没有设备")
    return found


@router.post(
    "/{task_id}/call",
    summary="The merchant's phone in clear, to call from the phone (audited)",
    responses=NOT_FOUND,
)
async def task_call(
    principal: TaskWorker, tasks: TasksDep, reach: ReachDep, site: SiteDep, audit: AuditDep, task_id: TaskId
) -> Phone:
    await _within_reach(tasks, reach, principal, task_id)
    phone = await site.phone(task_id)
    if phone is None:
        raise ApiError(404, "NO_PHONE", f"the merchant of task {task_id} has no phone on record", "商户未登记电话")
    await audit(principal, "merchant.contact.call", str(task_id))
    return Phone(phone=phone)


@router.post("/{task_id}/notes", summary="Add a note to the task", responses=NOT_FOUND, status_code=201)
async def add_task_note(
    principal: TaskWorker, tasks: TasksDep, reach: ReachDep, site: SiteDep, task_id: TaskId, body: NoteBody
) -> Site:
    await _within_reach(tasks, reach, principal, task_id)
    await site.note(task_id, body.text, by=principal.login, now=datetime.now(tz=UTC))
    found = await site.site(task_id)
    assert found is not None  # noqa: S101 - the task was just found within reach
    return found


@retire_router.post(
    "/{device_id}/retire",
    summary="Retire a device for good (lost, stolen, scrapped): out of the figures from now, its open tasks"
    " closed, its credentials revoked",
    responses=NOT_FOUND,
)
async def retire_device(
    principal: RegistryWriter,
    tasks: TasksDep,
    credentials: CredentialsDep,
    audit: AuditDep,
    device_id: DeviceIdPath,
    body: RetireBody,
) -> Retired:
    retired = await tasks.retire(device_id, body.reason, body.note, by=principal.login, now=datetime.now(tz=UTC))
    with suppress(IdentityError):  # never provisioned: nothing to revoke
        await credentials.revoke(device_id, by=principal.login)
    await audit(principal, "device.retire", device_id, detail=retired.model_dump(mode="json") | {"note": body.note})
    return retired
