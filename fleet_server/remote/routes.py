"""HTTP routes for acting on one device (`/api/v1/devices/{id}/...`): remote commands with their
results, and the merchant's settings. Every call checks the device is within the caller's
reach; every change goes to the audit log."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, Field

from firmware_protocols.messages import DailySpan
from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, DeviceCommander, DeviceReader, ReachDep, SettingsWriter
from fleet_server.errors import ApiError, RemoteError
from fleet_server.http.params import DeviceIdPath
from fleet_server.http.services import provide
from fleet_server.remote.remote import CommandView, DeviceRemote, SettingsChange, SettingsView

RemoteDep = Annotated[DeviceRemote, Depends(provide(DeviceRemote))]

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=AUTH_ERRORS)


class CommandAsk(BaseModel):
    name: Literal["diagnose", "test_announce", "reboot", "fetch_log", "set_volume", "set_config"]
    args: dict[str, Any] = Field(default_factory=dict)
    wait_s: float = Field(default=15.0, ge=0, le=60, description="How long to wait for the device's final answer")


@router.post(
    "/{device_id}/commands",
    summary="Run a remote command; the answer once the device has given its result (202 if not yet)",
)
async def run_command(
    principal: DeviceCommander,
    device_id: DeviceIdPath,
    body: CommandAsk,
    response: Response,
    reach: ReachDep,
    remote: RemoteDep,
    audit: AuditDep,
) -> CommandView:
    await reach.device(principal, device_id)
    if not principal.may_command(body.name):
        raise ApiError(
            403, "COMMAND_NOT_ALLOWED", f"the {principal.role} role may not send {body.name}", "您的账号不能发送此指令"
        )
    try:
        view = await remote.command(device_id, body.name, body.args, issued_by=principal.login, wait_s=body.wait_s)
    except RemoteError as exc:
        # Refused all the same (the one error handler answers it); the attempt is on record.
        await audit(principal, f"device.{body.name}", device_id, outcome="failed", detail={"error": str(exc)})
        raise
    await audit(
        principal,
        f"device.{body.name}",
        device_id,
        detail={"command_id": view.command_id, "args": body.args, "status": view.status},
    )
    if not view.final:
        response.status_code = 202
    return view


@router.get("/{device_id}/commands", summary="Recent remote commands of a device, newest first")
async def recent_commands(
    principal: DeviceReader,
    device_id: DeviceIdPath,
    reach: ReachDep,
    remote: RemoteDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> list[CommandView]:
    await reach.device(principal, device_id)
    return await remote.recent_commands(device_id, limit=limit, reach=principal.reach())


@router.get("/{device_id}/commands/{command_id}", summary="One command and its result")
async def get_command(
    principal: DeviceReader,
    device_id: DeviceIdPath,
    command_id: Annotated[str, Path(max_length=64)],
    reach: ReachDep,
    remote: RemoteDep,
) -> CommandView:
    await reach.device(principal, device_id)
    found = await remote.find_command(command_id, device_id=device_id, reach=principal.reach())
    missing = ApiError(404, "COMMAND_NOT_FOUND", f"command {command_id} not found", f"指令 {command_id} 不存在")
    return await reach.found(principal, found, "command", command_id, missing)


@router.get("/{device_id}/settings", summary="The merchant's settings: as saved, and whether the device holds them")
async def get_settings(
    principal: DeviceReader, device_id: DeviceIdPath, reach: ReachDep, remote: RemoteDep
) -> SettingsView:
    await reach.device(principal, device_id)
    return await remote.settings_of(device_id, reach=principal.reach())


class SettingsBody(BaseModel):
    volume: Annotated[int, Field(ge=0, le=10)] | None = None
    repeat: Annotated[int, Field(ge=1, le=3)] | None = None
    quiet_hours: DailySpan | None = None
    clear_quiet_hours: bool = False


@router.put("/{device_id}/settings", summary="Change volume, repeat or quiet hours; sent to the device, signed")
async def put_settings(
    principal: SettingsWriter,
    device_id: DeviceIdPath,
    body: SettingsBody,
    reach: ReachDep,
    remote: RemoteDep,
    audit: AuditDep,
) -> SettingsView:
    await reach.device(principal, device_id)
    view = await remote.change_settings(
        device_id, SettingsChange.model_validate(body.model_dump()), updated_by=principal.login, reach=principal.reach()
    )
    await audit(
        principal,
        "device.settings",
        device_id,
        detail=body.model_dump(mode="json", exclude_defaults=True) | {"version": view.version},
    )
    return view
