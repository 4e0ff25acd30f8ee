"""HTTP routes of the figures: by slice and window (JSON and CSV), trends, the fleet summary
against the targets, alerts, and Prometheus metrics at `/metrics`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse, Response

from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, FiguresRebuilder, FleetReader
from fleet_server.errors import ApiError
from fleet_server.figures.figures import Figures, FleetFigures, Level, Recomputed, recompute
from fleet_server.figures.overview import SUMMARY_REUSE_S, Alert, FleetOverview, FleetSummary, TrendPoint
from fleet_server.http.params import End, Start, window
from fleet_server.http.services import provide, provide_optional
from fleet_server.identity.reports import ReportStats
from fleet_server.ingest.consumer import IngestStats
from fleet_server.ingest.storage import Storage, storage_metrics
from fleet_server.quarantine.store import HeldCount, Quarantine

FiguresDep = Annotated[FleetFigures, Depends(provide(FleetFigures))]
OverviewDep = Annotated[FleetOverview, Depends(provide(FleetOverview))]
IngestStatsDep = Annotated[IngestStats | None, Depends(provide_optional(IngestStats))]
QuarantineOptional = Annotated[Quarantine | None, Depends(provide_optional(Quarantine))]
ReportStatsDep = Annotated[ReportStats | None, Depends(provide_optional(ReportStats))]
StorageOptional = Annotated[Storage | None, Depends(provide_optional(Storage))]

router = APIRouter(prefix="/api/v1", tags=["devices"], responses=AUTH_ERRORS)
metrics_router = APIRouter(tags=["ops"], responses=AUTH_ERRORS)

Scope = Annotated[
    str | None, Query(description="Slice as LEVEL:VALUE, e.g. district:D1 or model:HD-S1", max_length=200)
]
By = Annotated[Level | None, Query(description="Group by this level: one row per key")]


def _scope(scope: str | None) -> tuple[Level, str] | None:
    if scope is None:
        return None
    level, _, value = scope.partition(":")
    if level not in Level.__members__.values() or not value:
        raise ApiError(
            422,
            "BAD_SCOPE",
            f"scope must be LEVEL:VALUE with LEVEL one of {', '.join(Level)}",
            f"scope 格式应为 层级:值，层级为 {', '.join(Level)} 之一",
        )
    return Level(level), value


async def _compute(
    figures: FleetFigures, start: datetime | None, end: datetime | None, scope: str | None, by: Level | None
) -> list[Figures]:
    return await figures.compute(*window(start, end), scope=_scope(scope), group_by=by)


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


@router.get("/figures/trend", summary="The figures bucket by bucket: 24 h by the hour, 7 d or 30 d by the day")
async def figures_trend(
    _: FleetReader,
    overview: OverviewDep,
    period: Annotated[str, Query(pattern="^(24h|7d|30d)$")] = "24h",
    scope: Scope = None,
    end: End = None,
) -> list[TrendPoint]:
    return await overview.trend(period, _scope(scope), window(None, end)[1])


@router.post(
    "/figures/recompute",
    summary="Rebuild the figure rollups from raw history; the last 24 hours both ways (they must agree)",
)
async def figures_recompute(principal: FiguresRebuilder, figures: FiguresDep, audit: AuditDep) -> Recomputed:
    done = await recompute(figures, datetime.now(tz=UTC))
    await audit(principal, "figures.recompute", "rollups", detail={"seconds": round(done.seconds, 3)})
    return done


@router.get(
    "/fleet/summary",
    summary="Devices by state now and the figures of the window against targets"
    f" (the default 24-hour window is reused for up to {SUMMARY_REUSE_S:.0f} s)",
)
async def fleet_summary(_: FleetReader, overview: OverviewDep, start: Start = None, end: End = None) -> FleetSummary:
    return await overview.summary(window(start, end), default_window=start is None and end is None)


@router.get("/alerts", summary="What needs attention now: figures off target (24 h) and new tasks")
async def alerts(_: FleetReader, overview: OverviewDep) -> list[Alert]:
    return await overview.alerts(window(None, None))


@metrics_router.get("/metrics", summary="Prometheus metrics: fleet gauges", response_class=PlainTextResponse)
async def metrics(
    _: FleetReader,
    overview: OverviewDep,
    ingest: IngestStatsDep,
    quarantine: QuarantineOptional,
    reports: ReportStatsDep,
    storage: StorageOptional,
) -> PlainTextResponse:
    now = datetime.now(tz=UTC)
    text = await overview.metrics(now, ingest)
    if storage is not None:
        text += storage_metrics(await storage.status(now))
    if quarantine is not None:
        text += quarantine_metrics(await quarantine.counts())
    if reports is not None:
        text += report_metrics(reports)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def quarantine_metrics(counts: list[HeldCount]) -> str:
    """Prometheus text: messages held in quarantine, by consumer and reason (every process's)."""
    lines = [
        "# HELP haodian_quarantined_messages Messages held in quarantine (distinct), by consumer and reason.",
        "# TYPE haodian_quarantined_messages gauge",
    ]
    lines += [
        f'haodian_quarantined_messages{{consumer="{c.consumer}",reason="{c.reason}"}} {c.messages}' for c in counts
    ]
    lines += [
        "# HELP haodian_quarantined_copies Copies of held messages the broker delivered, by consumer and reason.",
        "# TYPE haodian_quarantined_copies gauge",
    ]
    lines += [f'haodian_quarantined_copies{{consumer="{c.consumer}",reason="{c.reason}"}} {c.copies}' for c in counts]
    return "\n".join(lines) + "\n"


def report_metrics(stats: ReportStats) -> str:
    """Prometheus text: device reports by what their signature said, in this process."""
    lines = [
        "# HELP haodian_device_reports_total Device reports checked, by signature: signed, unsigned (devices"
        " that have never signed), refused (forged).",
        "# TYPE haodian_device_reports_total counter",
    ]
    lines += [
        f'haodian_device_reports_total{{signature="{name}"}} {getattr(stats, name)}'
        for name in ("signed", "unsigned", "refused")
    ]
    return "\n".join(lines) + "\n"
