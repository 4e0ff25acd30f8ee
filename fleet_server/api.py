"""HTTP API of the fleet server (`/api/v1/...`): devices and their timelines, reliability
figures by slice and window (JSON and CSV), the fleet summary against targets, alerts, tasks
for field agents, registry import, and Prometheus metrics at `/metrics`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.api_errors import NOT_FOUND, ApiError
from fleet_server.auth.deps import (
    AUTH_ERRORS,
    AuditDep,
    DeviceReader,
    FleetReader,
    ReachDep,
    RegistryWriter,
    TaskAssigner,
    TaskReader,
    TaskWorker,
)
from fleet_server.auth.roles import Principal
from fleet_server.figures import TARGETS, Figures, FiguresError, FleetFigures, Level, StateCounts, rating, state_counts
from fleet_server.inspector import Inspector
from fleet_server.recent import Recent
from fleet_server.registry import DeviceDetail, DeviceRegistry, DeviceView, Timeline
from fleet_server.registry_import import ImportError_, ImportReport, import_registry
from fleet_server.tasks import Task, TaskError, TaskStatus


async def _registry(request: Request) -> DeviceRegistry:
    registry: DeviceRegistry = request.app.state.registry
    return registry


async def _figures(request: Request) -> FleetFigures:
    figures: FleetFigures = request.app.state.figures
    return figures


async def _inspector(request: Request) -> Inspector:
    inspector: Inspector = request.app.state.inspector
    return inspector


RegistryDep = Annotated[DeviceRegistry, Depends(_registry)]
FiguresDep = Annotated[FleetFigures, Depends(_figures)]
InspectorDep = Annotated[Inspector, Depends(_inspector)]
DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN.pattern, description="Device id")]
Start = Annotated[datetime | None, Query(description="Window start (ISO 8601 with zone); default: end - 24 h")]
End = Annotated[datetime | None, Query(description="Window end (ISO 8601 with zone); default: now")]

router = APIRouter(prefix="/api/v1", tags=["devices"], responses=AUTH_ERRORS)
metrics_router = APIRouter(tags=["ops"], responses=AUTH_ERRORS)


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or datetime.now(tz=UTC)
    start = start or end - timedelta(hours=24)
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None:
            raise ApiError(
                422,
                "BAD_WINDOW",
                f"{name} needs a time zone, e.g. 2026-11-01T00:00:00+08:00",
                f"{name} 需要带时区，例如 2026-11-01T00:00:00+08:00",
            )
    if end <= start:
        raise ApiError(422, "BAD_WINDOW", "the window's end must be after its start", "时间窗口的结束必须晚于开始")
    if end - start > timedelta(days=366):
        raise ApiError(422, "BAD_WINDOW", "windows are at most 366 days", "时间窗口最长 366 天")
    return start, end


@router.get("/devices", summary="Devices within the caller's reach, with state; filter by state, serial or a search")
async def list_devices(
    principal: DeviceReader,
    registry: RegistryDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
    state: Annotated[str | None, Query(max_length=32)] = None,
    serial: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=64, description="A device id or serial number, or its start")] = None,
) -> list[DeviceView]:
    stores, merchant_id = principal.reach()
    return await registry.list_devices(
        limit=limit,
        offset=offset,
        state=state,
        serial=serial,
        search=(q or "").strip() or None,
        stores=stores,
        merchant_id=merchant_id,
    )


@router.get(
    "/devices/{device_id}", summary="One device with its registry data and last health report", responses=NOT_FOUND
)
async def get_device(
    principal: DeviceReader, registry: RegistryDep, reach: ReachDep, device_id: DeviceIdPath
) -> DeviceDetail:
    await reach.device(principal, device_id)
    device = await registry.get_device(device_id)
    if device is None:
        raise ApiError(404, "DEVICE_NOT_FOUND", f"device {device_id} not found", f"设备 {device_id} 不存在")
    return device


@router.get(
    "/devices/{device_id}/timeline", summary="States, events, announcements and tasks of a device", responses=NOT_FOUND
)
async def device_timeline(
    principal: DeviceReader,
    registry: RegistryDep,
    reach: ReachDep,
    device_id: DeviceIdPath,
    start: Start = None,
    end: End = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> Timeline:
    await reach.device(principal, device_id)
    if await registry.get_device(device_id) is None:
        raise ApiError(404, "DEVICE_NOT_FOUND", f"device {device_id} not found", f"设备 {device_id} 不存在")
    return await registry.timeline(device_id, *_window(start, end), limit=limit)


async def _compute(
    figures: FleetFigures, start: datetime | None, end: datetime | None, scope: str | None, by: Level | None
) -> list[Figures]:
    window = _window(start, end)
    parsed: tuple[Level, str] | None = None
    if scope is not None:
        level, _, value = scope.partition(":")
        if level not in Level.__members__.values() or not value:
            raise ApiError(
                422,
                "BAD_SCOPE",
                f"scope must be LEVEL:VALUE with LEVEL one of {', '.join(Level)}",
                f"scope 格式应为 层级:值，层级为 {', '.join(Level)} 之一",
            )
        parsed = (Level(level), value)
    try:
        return await figures.compute(*window, scope=parsed, group_by=by)
    except FiguresError as exc:
        raise ApiError(422, "BAD_WINDOW", str(exc), "时间窗口无效") from exc


Scope = Annotated[
    str | None, Query(description="Slice as LEVEL:VALUE, e.g. district:D1 or model:HD-S1", max_length=200)
]
By = Annotated[Level | None, Query(description="Group by this level: one row per key")]


@router.get("/figures", summary="Reliability figures (DESIGN.md definitions) for a slice and window")
async def get_figures(
    _: FleetReader, figures: FiguresDep, start: Start = None, end: End = None, scope: Scope = None, by: By = None
) -> list[Figures]:
    return await _compute(figures, start, end, scope, by)


@router.get("/figures.csv", summary="The same figures as CSV", response_class=PlainTextResponse)
async def get_figures_csv(
    _: FleetReader, figures: FiguresDep, start: Start = None, end: End = None, scope: Scope = None, by: By = None
) -> Response:
    rows = await _compute(figures, start, end, scope, by)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(Figures.model_fields))
    writer.writeheader()
    for row in rows:
        writer.writerow(row.model_dump(mode="json"))
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="figures.csv"'},
    )


PERIODS: Final = {
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(days=1)),
    "30d": (timedelta(days=30), timedelta(days=1)),
}


class TrendPoint(BaseModel):
    start: datetime
    end: datetime
    label: str  # the bucket in the fleet's local time: "14:00" by the hour, "11-21" by the day
    figures: Figures


@router.get("/figures/trend", summary="The figures bucket by bucket: 24 h by the hour, 7 d or 30 d by the day")
async def figures_trend(
    _: FleetReader,
    figures: FiguresDep,
    period: Annotated[str, Query(pattern="^(24h|7d|30d)$")] = "24h",
    scope: Scope = None,
    end: End = None,
) -> list[TrendPoint]:
    span, step = PERIODS[period]
    end = _window(None, end)[1]
    # Whole buckets: hours on the hour, days from the fleet's local midnight; the last one is
    # the bucket in progress, up to now.
    offset = timedelta(minutes=figures.fleet_utc_offset_min)
    last_start = (
        datetime.fromtimestamp(((end + offset).timestamp() // step.total_seconds()) * step.total_seconds(), tz=UTC)
        - offset
    )
    starts = [last_start - step * i for i in range(int(span / step) - 1, -1, -1)]
    points = []
    for start in starts:
        [row] = await _compute(figures, start, min(start + step, end), scope, None)
        local = start + offset
        label = f"{local:%H:%M}" if step < timedelta(days=1) else f"{local:%m-%d}"
        points.append(TrendPoint(start=start, end=min(start + step, end), label=label, figures=row))
    return points


class FigureTile(BaseModel):
    name: str
    value: float | None
    target: float
    status: str  # green / amber / red / none


class FleetSummary(BaseModel):
    devices: int
    online: int
    window_start: datetime
    window_end: datetime
    now: StateCounts
    tiles: list[FigureTile]
    figures: Figures
    open_tasks: int


# The default summary (the last 24 hours, as every dashboard asks) is computed at most once per
# this many seconds per process; a window given explicitly is always computed.
SUMMARY_REUSE_S = 5.0


@router.get(
    "/fleet/summary",
    summary="Devices by state now and the figures of the window against targets"
    f" (the default 24-hour window is reused for up to {SUMMARY_REUSE_S:.0f} s)",
)
async def fleet_summary(
    request: Request,
    _: FleetReader,
    registry: RegistryDep,
    figures: FiguresDep,
    inspector: InspectorDep,
    start: Start = None,
    end: End = None,
) -> FleetSummary:
    window = _window(start, end)
    if start is None and end is None:
        recent: Recent[FleetSummary] = request.app.state.fleet_summary_recent
        return await recent.get(lambda: _fleet_summary(registry, figures, inspector, window))
    return await _fleet_summary(registry, figures, inspector, window)


async def _fleet_summary(
    registry: DeviceRegistry, figures: FleetFigures, inspector: Inspector, window: tuple[datetime, datetime]
) -> FleetSummary:
    [f] = await figures.compute(*window)
    basic = await registry.summary()
    values = f.model_dump()
    tiles = [
        FigureTile(name=name, value=values[name], target=target.value, status=rating(name, values[name]))
        for name, target in TARGETS.items()
    ]
    open_tasks = sum((await inspector.tasks.open_counts()).values())
    return FleetSummary(
        devices=basic.devices,
        online=basic.online,
        window_start=window[0],
        window_end=window[1],
        now=await state_counts(registry.pool, window[1]),
        tiles=tiles,
        figures=f,
        open_tasks=open_tasks,
    )


class Alert(BaseModel):
    severity: str  # red / amber / task
    code: str
    message: str
    message_zh: str
    detail: dict[str, Any] = Field(default_factory=dict)


@router.get("/alerts", summary="What needs attention now: figures off target (24 h) and new tasks")
async def alerts(_: FleetReader, figures: FiguresDep, inspector: InspectorDep) -> list[Alert]:
    window = _window(None, None)
    [f] = await figures.compute(*window)
    values = f.model_dump()
    out = [
        Alert(
            severity=status,
            code=f"FIGURE_{name.upper()}",
            message=f"{name} is {values[name]:.6g} against a target of {TARGETS[name].value:g} (last 24 h)",
            message_zh=f"{name} 近24小时为 {values[name]:.6g}，目标 {TARGETS[name].value:g}",
            detail={"value": values[name], "target": TARGETS[name].value},
        )
        for name in TARGETS
        if (status := rating(name, values[name])) in ("red", "amber")
    ]
    out.extend(
        Alert(
            severity="task",
            code=f"TASK_{task.kind.upper()}",
            message=f"device {task.device_id}: {task.kind} (task {task.task_id}, {task.status})",
            message_zh=f"设备 {task.device_id}：{task.kind}（工单 {task.task_id}，{task.status}）",
            detail={"task_id": task.task_id, "confidence": task.confidence},
        )
        for task in await inspector.tasks.find(open_only=True, limit=200)
    )
    return out


tasks_router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], responses=AUTH_ERRORS)


def _task_error(exc: TaskError) -> ApiError:
    status = 404 if exc.code.endswith("NOT_FOUND") else 409
    return ApiError(status, exc.code, str(exc), exc.message_zh)


@tasks_router.get("", summary="Tasks for field agents, newest first; a field agent's own stores only")
async def list_tasks(
    principal: TaskReader,
    inspector: InspectorDep,
    status: TaskStatus | None = None,
    open_only: bool = False,
    agent_id: Annotated[str | None, Query(max_length=64)] = None,
    store_id: Annotated[str | None, Query(max_length=64)] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[Task]:
    return await inspector.tasks.find(
        status=status,
        open_only=open_only,
        agent_id=agent_id,
        store_id=store_id,
        device_id=device_id,
        stores=principal.reach()[0],
        limit=limit,
    )


TaskId = Annotated[int, Path(ge=1)]


async def _task_within_reach(inspector: Inspector, reach: ReachDep, principal: Principal, task_id: int) -> Task:
    try:
        task = await inspector.tasks.get(task_id)
    except TaskError as exc:
        raise _task_error(exc) from exc
    await reach.store(principal, task.store_id)
    return task


@tasks_router.get("/{task_id}", summary="One task", responses=NOT_FOUND)
async def get_task(principal: TaskReader, inspector: InspectorDep, reach: ReachDep, task_id: TaskId) -> Task:
    return await _task_within_reach(inspector, reach, principal, task_id)


class AssignBody(BaseModel):
    agent_id: str = Field(min_length=1, max_length=64)


class CloseBody(BaseModel):
    note: str = Field(default="", max_length=500)


@tasks_router.post("/{task_id}/assign", summary="Give the task to a field agent", responses=NOT_FOUND)
async def assign_task(
    principal: TaskAssigner,
    inspector: InspectorDep,
    audit: AuditDep,
    task_id: TaskId,
    body: AssignBody,
) -> Task:
    try:
        task = await inspector.tasks.assign(task_id, body.agent_id, datetime.now(tz=UTC))
    except TaskError as exc:
        raise _task_error(exc) from exc
    await audit(principal, "task.assign", str(task_id), detail=body.model_dump())
    return task


@tasks_router.post(
    "/{task_id}/start", summary="The field agent starts work: the device is under repair", responses=NOT_FOUND
)
async def start_task(
    principal: TaskWorker, inspector: InspectorDep, reach: ReachDep, audit: AuditDep, task_id: TaskId
) -> Task:
    await _task_within_reach(inspector, reach, principal, task_id)
    try:
        task = await inspector.tasks.start(task_id, datetime.now(tz=UTC))
    except TaskError as exc:
        raise _task_error(exc) from exc
    await audit(principal, "task.start", str(task_id), detail={"device_id": task.device_id})
    return task


@tasks_router.post(
    "/{task_id}/close", summary="Ask to close: the task closes once the device is verified", responses=NOT_FOUND
)
async def close_task(
    principal: TaskWorker,
    inspector: InspectorDep,
    reach: ReachDep,
    audit: AuditDep,
    task_id: TaskId,
    body: CloseBody,
) -> Task:
    await _task_within_reach(inspector, reach, principal, task_id)
    try:
        task = await inspector.tasks.request_close(task_id, body.note, datetime.now(tz=UTC))
    except TaskError as exc:
        raise _task_error(exc) from exc
    detail = {"device_id": task.device_id, "note": body.note, "status": task.status.value}
    await audit(principal, "task.close", str(task_id), detail=detail)
    return task


registry_router = APIRouter(prefix="/api/v1/registry", tags=["registry"], responses=AUTH_ERRORS)


@registry_router.post("/import", summary="Import the registry from CSV (one row per device)")
async def import_csv(
    principal: RegistryWriter,
    registry: RegistryDep,
    audit: AuditDep,
    body: Annotated[str, Body(media_type="text/csv", max_length=64 * 1024 * 1024)],
    request: Request,
    dry_run: bool = True,
) -> ImportReport:
    try:
        report = await import_registry(registry.pool, body, dry_run=dry_run, cipher=request.app.state.contacts.cipher)
    except ImportError_ as exc:
        raise ApiError(422, "BAD_CSV", str(exc), f"CSV 文件无法导入：{exc}") from exc
    if not dry_run:
        detail = {"bytes": len(body), "report": report.model_dump(mode="json", exclude={"problems"})}
        await audit(principal, "registry.import", "registry", detail=detail)
    return report


@metrics_router.get("/metrics", summary="Prometheus metrics: fleet gauges", response_class=PlainTextResponse)
async def metrics(
    _: FleetReader, registry: RegistryDep, inspector: InspectorDep, request: Request
) -> PlainTextResponse:
    now = datetime.now(tz=UTC)
    counts = await state_counts(registry.pool, now)
    lines = ["# HELP haodian_devices Devices by state, from the state history.", "# TYPE haodian_devices gauge"]
    lines += [f'haodian_devices{{state="{state}"}} {n}' for state, n in sorted(counts.by_state.items())]
    lines += [
        "# HELP haodian_intact_rate Devices in a good state / devices deployed, now.",
        "# TYPE haodian_intact_rate gauge",
        f"haodian_intact_rate {counts.intact_rate or 0}",
    ]
    by_kind = await inspector.tasks.open_counts()
    lines += ["# HELP haodian_open_tasks Field-agent tasks not yet closed.", "# TYPE haodian_open_tasks gauge"]
    lines += [f'haodian_open_tasks{{kind="{kind}"}} {n}' for kind, n in sorted(by_kind.items())]
    ingest = getattr(request.app.state, "ingest_stats", None)
    if ingest is not None:
        for name in ("received", "rejected", "written", "write_failures"):
            lines += [
                f"# TYPE haodian_ingest_{name}_total counter",
                f"haodian_ingest_{name}_total {getattr(ingest, name)}",
            ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
