"""HTTP routes of the figures: by slice and window (JSON and CSV), trends, the fleet summary
against the targets, alerts, and Prometheus metrics at `/metrics`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse, Response

from fleet_server.auth.deps import AUTH_ERRORS, FleetReader
from fleet_server.errors import ApiError
from fleet_server.figures.figures import Figures, FleetFigures, Level
from fleet_server.figures.overview import SUMMARY_REUSE_S, Alert, FleetOverview, FleetSummary, TrendPoint
from fleet_server.http.params import End, Start, window
from fleet_server.http.services import provide, provide_optional
from fleet_server.ingest.consumer import IngestStats

FiguresDep = Annotated[FleetFigures, Depends(provide(FleetFigures))]
OverviewDep = Annotated[FleetOverview, Depends(provide(FleetOverview))]
IngestStatsDep = Annotated[IngestStats | None, Depends(provide_optional(IngestStats))]

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
async def metrics(_: FleetReader, overview: OverviewDep, ingest: IngestStatsDep) -> PlainTextResponse:
    text = await overview.metrics(datetime.now(tz=UTC), ingest)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
