"""HTTP API of the fleet server: devices and fleet summary (`/api/v1/...`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.api_errors import NOT_FOUND, ApiError
from fleet_server.registry import DeviceDetail, DeviceRegistry, DeviceView, FleetSummary


def _registry(request: Request) -> DeviceRegistry:
    registry: DeviceRegistry = request.app.state.registry
    return registry


RegistryDep = Annotated[DeviceRegistry, Depends(_registry)]
DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN.pattern, description="Device id")]

router = APIRouter(prefix="/api/v1", tags=["devices"])


@router.get("/devices", summary="List devices with online state")
async def list_devices(
    registry: RegistryDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[DeviceView]:
    return await registry.list_devices(limit=limit, offset=offset)


@router.get("/devices/{device_id}", summary="One device with its last health report", responses=NOT_FOUND)
async def get_device(registry: RegistryDep, device_id: DeviceIdPath) -> DeviceDetail:
    device = await registry.get_device(device_id)
    if device is None:
        raise ApiError(404, "DEVICE_NOT_FOUND", f"device {device_id} not found", f"设备 {device_id} 不存在")
    return device


@router.get("/fleet/summary", summary="Devices known and online")
async def fleet_summary(registry: RegistryDep) -> FleetSummary:
    return await registry.summary()
