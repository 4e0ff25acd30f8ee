"""HTTP routes of the devices slice: devices within the caller's reach, one device, its timeline
and recent announcements, and the registry import."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, DeviceReader, FleetReader, ReachDep, RegistryWriter
from fleet_server.contacts.contacts import Contacts
from fleet_server.devices.importer import ImportReport, import_registry
from fleet_server.devices.registry import Agent, Announcement, DeviceDetail, DeviceRegistry, DeviceView, Timeline
from fleet_server.errors import ApiError
from fleet_server.http.errors import NOT_FOUND
from fleet_server.http.params import DeviceIdPath, End, Start, window
from fleet_server.http.services import provide

RegistryDep = Annotated[DeviceRegistry, Depends(provide(DeviceRegistry))]
ContactsDep = Annotated[Contacts, Depends(provide(Contacts))]

router = APIRouter(prefix="/api/v1", tags=["devices"], responses=AUTH_ERRORS)
registry_router = APIRouter(prefix="/api/v1/registry", tags=["registry"], responses=AUTH_ERRORS)


def _not_found(device_id: str) -> ApiError:
    return ApiError(404, "DEVICE_NOT_FOUND", f"device {device_id} not found", f"设备 {device_id} 不存在")


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
        raise _not_found(device_id)
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
    if not await registry.known(device_id):
        raise _not_found(device_id)
    return await registry.timeline(device_id, *window(start, end), limit=limit, reach=principal.reach())


@router.get("/devices/{device_id}/announcements", summary="Recent announcements of a device: played or missed")
async def announcements(
    principal: DeviceReader,
    device_id: DeviceIdPath,
    registry: RegistryDep,
    reach: ReachDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[Announcement]:
    await reach.device(principal, device_id)
    return await registry.announcements(device_id, limit=limit, reach=principal.reach())


@registry_router.get("/agents", summary="Field agents and the stores they look after (to assign tasks)")
async def list_agents(_: FleetReader, registry: RegistryDep) -> list[Agent]:
    return await registry.agents()


@registry_router.post("/import", summary="Import the registry from CSV (one row per device)")
async def import_csv(
    principal: RegistryWriter,
    registry: RegistryDep,
    contacts: ContactsDep,
    audit: AuditDep,
    body: Annotated[str, Body(media_type="text/csv", max_length=64 * 1024 * 1024)],
    dry_run: bool = True,
) -> ImportReport:
    report = await import_registry(registry.pool, body, dry_run=dry_run, cipher=contacts.cipher)
    if not dry_run:
        detail = {"bytes": len(body), "report": report.model_dump(mode="json", exclude={"problems"})}
        await audit(principal, "registry.import", "registry", detail=detail)
    return report
