"""HTTP route of the telemetry storage (`/api/v1/storage`): the mode in use and why, its
settings, and TimescaleDB's background jobs with their failures, for every ops account."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from fleet_server.auth.deps import AUTH_ERRORS, FleetReader
from fleet_server.http.services import provide
from fleet_server.ingest.storage import Storage, StorageStatus

StorageDep = Annotated[Storage, Depends(provide(Storage))]

router = APIRouter(prefix="/api/v1/storage", tags=["ops"], responses=AUTH_ERRORS)


@router.get("", summary="Telemetry storage: mode and why, settings, TimescaleDB jobs and their recent errors")
async def storage_status(_: FleetReader, storage: StorageDep) -> StorageStatus:
    return await storage.status(datetime.now(tz=UTC))
