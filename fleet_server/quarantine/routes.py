"""HTTP routes of the quarantine (`/api/v1/quarantine`): what is held, by consumer and reason,
for every ops account; the held messages themselves (raw payloads may carry merchants' data)
and purging them, for ops-admin only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, FleetReader, QuarantineAdmin
from fleet_server.errors import ApiError
from fleet_server.http.errors import NOT_FOUND
from fleet_server.http.services import provide
from fleet_server.quarantine.store import Held, HeldCount, Poisoner, Quarantine

QuarantineDep = Annotated[Quarantine, Depends(provide(Quarantine))]
DeviceFilter = Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN.pattern, description="Only this device's")]

router = APIRouter(prefix="/api/v1/quarantine", tags=["ops"], responses=AUTH_ERRORS)

# A device with this many held messages in a day is shown as one that keeps sending poison.
POISONER_MIN = 5


class QuarantineSummary(BaseModel):
    """What is held: by consumer and reason, and the devices that sent the most in 24 h."""

    counts: list[HeldCount]
    total: int
    devices: list[Poisoner]


class Purged(BaseModel):
    purged: int


@router.get("/summary", summary="Messages held in quarantine, by consumer and reason (no payloads)")
async def summary(_: FleetReader, quarantine: QuarantineDep) -> QuarantineSummary:
    counts = await quarantine.counts()
    since = datetime.now(tz=UTC) - timedelta(days=1)
    devices = await quarantine.poisoners(since=since, min_messages=1)
    devices.sort(key=lambda d: (-d.messages, d.device_id))
    return QuarantineSummary(counts=counts, total=sum(c.messages for c in counts), devices=devices[:20])


@router.get("", summary="The newest held messages, with their payloads (ops-admin)")
async def held(
    _: QuarantineAdmin,
    quarantine: QuarantineDep,
    device_id: DeviceFilter = None,
    consumer: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[Held]:
    return await quarantine.recent(device_id=device_id, consumer=consumer, limit=limit)


@router.get("/{held_id}", summary="One held message with all its kept bytes (ops-admin)", responses=NOT_FOUND)
async def one(_: QuarantineAdmin, quarantine: QuarantineDep, held_id: int) -> Held:
    found = await quarantine.one(held_id)
    if found is None:
        raise ApiError(404, "NOT_FOUND", f"no held message {held_id}", f"隔离区中没有消息 {held_id}")
    return found


@router.delete("", summary="Purge held messages: by ids, of a device, held before a time (ops-admin)")
async def purge(
    principal: QuarantineAdmin,
    quarantine: QuarantineDep,
    audit: AuditDep,
    ids: Annotated[list[int] | None, Query(max_length=1000)] = None,
    device_id: DeviceFilter = None,
    before: Annotated[datetime | None, Query(description="Held last before this time (ISO 8601 with zone)")] = None,
    everything: Annotated[bool, Query(description="Required to purge with no filter at all")] = False,
) -> Purged:
    if ids is None and device_id is None and before is None and not everything:
        raise ApiError(
            422,
            "PURGE_NEEDS_FILTER",
            "name ids, a device or a time to purge, or say everything=true",
            "请指定要清除的消息编号、设备或时间；清除全部须 everything=true",
        )
    if before is not None and before.tzinfo is None:
        raise ApiError(422, "NAIVE_TIME", "before needs a time zone", "before 须带时区")
    purged = await quarantine.purge(ids=ids, device_id=device_id, before=before)
    await audit(
        principal,
        "quarantine.purge",
        device_id or "*",
        detail={"ids": ids, "before": before.isoformat() if before else None, "purged": purged},
    )
    return Purged(purged=purged)
