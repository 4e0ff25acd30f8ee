"""What the dashboards ask of the figures, composed: the fleet summary against the targets
(reused for a few seconds when it is the default window), what needs attention now, the figures
bucket by bucket, and the Prometheus gauges. The routes only take the request's parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, Field

from fleet_server.devices.registry import DeviceRegistry
from fleet_server.figures.figures import TARGETS, Figures, FleetFigures, Level, StateCounts, rating, state_counts
from fleet_server.figures.recent import Recent
from fleet_server.ingest.consumer import IngestStats
from fleet_server.inspection.tasks import TaskBook

# The default summary (the last 24 hours, as every dashboard asks) is computed at most once per
# this many seconds per process; a window given explicitly is always computed.
SUMMARY_REUSE_S: Final = 5.0

PERIODS: Final = {
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(days=1)),
    "30d": (timedelta(days=30), timedelta(days=1)),
}


class FigureTile(BaseModel):
    name: str
    value: float | None
    target: float
    status: str  # green / amber / red / none


class FleetSummary(BaseModel):
    devices: int
    online: int
    clocks_off: int = 0  # devices whose board clock or reports are more than a minute off
    window_start: datetime
    window_end: datetime
    now: StateCounts
    tiles: list[FigureTile]
    figures: Figures
    open_tasks: int


class Alert(BaseModel):
    severity: str  # red / amber / task
    code: str
    message: str
    message_zh: str
    detail: dict[str, Any] = Field(default_factory=dict)


class TrendPoint(BaseModel):
    start: datetime
    end: datetime
    label: str  # the bucket in the fleet's local time: "14:00" by the hour, "11-21" by the day
    figures: Figures


class FleetOverview:
    def __init__(self, registry: DeviceRegistry, figures: FleetFigures, tasks: TaskBook) -> None:
        self.registry = registry
        self.figures = figures
        self.tasks = tasks
        self._default_summary: Recent[FleetSummary] = Recent(SUMMARY_REUSE_S)
        # The last 24 hours' figures, which the default summary and the alerts both show.
        self._last_day: Recent[Figures] = Recent(SUMMARY_REUSE_S)

    async def summary(self, window: tuple[datetime, datetime], *, default_window: bool) -> FleetSummary:
        if default_window:
            return await self._default_summary.get(lambda: self._summary(window, default_window=True))
        return await self._summary(window)

    async def _summary(self, window: tuple[datetime, datetime], *, default_window: bool = False) -> FleetSummary:
        f = await self._last_24h(window) if default_window else (await self.figures.compute(*window))[0]
        basic = await self.registry.summary()
        values = f.model_dump()
        tiles = [
            FigureTile(name=name, value=values[name], target=target.value, status=rating(name, values[name]))
            for name, target in TARGETS.items()
        ]
        return FleetSummary(
            devices=basic.devices,
            online=basic.online,
            clocks_off=basic.clocks_off,
            window_start=window[0],
            window_end=window[1],
            now=await state_counts(self.registry.pool, window[1]),
            tiles=tiles,
            figures=f,
            open_tasks=sum((await self.tasks.open_counts()).values()),
        )

    async def _last_24h(self, window: tuple[datetime, datetime]) -> Figures:
        async def compute() -> Figures:
            return (await self.figures.compute(*window))[0]

        return await self._last_day.get(compute)

    async def alerts(self, window: tuple[datetime, datetime]) -> list[Alert]:
        """Figures off target over `window` (the last 24 hours, reused for a few seconds like the
        summary's), and the tasks still open."""
        f = await self._last_24h(window)
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
            for task in await self.tasks.find(open_only=True, limit=200)
        )
        return out

    async def trend(self, period: str, scope: tuple[Level, str] | None, end: datetime) -> list[TrendPoint]:
        """The figures bucket by bucket over `period` up to `end`: whole hours (24 h) or the
        fleet's local days (7 d, 30 d); the last bucket is the one in progress."""
        span, step = PERIODS[period]
        offset = timedelta(minutes=self.figures.fleet_utc_offset_min)
        last_start = (
            datetime.fromtimestamp(((end + offset).timestamp() // step.total_seconds()) * step.total_seconds(), tz=UTC)
            - offset
        )
        starts = [last_start - step * i for i in range(int(span / step) - 1, -1, -1)]
        windows = [(start, min(start + step, end)) for start in starts]
        rows = await self.figures.series(windows, scope=scope)
        points = []
        for (start, stop), row in zip(windows, rows, strict=True):
            local = start + offset
            label = f"{local:%H:%M}" if step < timedelta(days=1) else f"{local:%m-%d}"
            points.append(TrendPoint(start=start, end=stop, label=label, figures=row))
        return points

    async def metrics(self, now: datetime, ingest: IngestStats | None) -> str:
        """Prometheus text: devices by state, the intact rate now, open tasks, ingest counters
        (the states as the devices hold them now: no read of the history)."""
        counts = await state_counts(self.registry.pool, now)
        lines = ["# HELP haodian_devices Devices by state, from the state history.", "# TYPE haodian_devices gauge"]
        lines += [f'haodian_devices{{state="{state}"}} {n}' for state, n in sorted(counts.by_state.items())]
        lines += [
            "# HELP haodian_intact_rate Devices in a good state / devices deployed, now.",
            "# TYPE haodian_intact_rate gauge",
            f"haodian_intact_rate {counts.intact_rate or 0}",
        ]
        by_kind = await self.tasks.open_counts()
        lines += ["# HELP haodian_open_tasks Field-agent tasks not yet closed.", "# TYPE haodian_open_tasks gauge"]
        lines += [f'haodian_open_tasks{{kind="{kind}"}} {n}' for kind, n in sorted(by_kind.items())]
        if ingest is not None:
            for name in ("received", "rejected", "written", "write_failures", "clock_refused"):
                lines += [
                    f"# TYPE haodian_ingest_{name}_total counter",
                    f"haodian_ingest_{name}_total {getattr(ingest, name)}",
                ]
        return "\n".join(lines) + "\n"
