"""What the pages do to and read about one device (`/api/v1/devices/{id}/...`): remote
commands with their results, the merchant's settings, and recent announcements. Every call
checks the device is within the caller's reach; every change goes to the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from firmware_protocols.messages import DailySpan
from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.api_errors import ApiError
from fleet_server.auth.deps import (
    AUTH_ERRORS,
    AuditDep,
    DeviceCommander,
    DeviceReader,
    ReachDep,
    SettingsWriter,
)
from fleet_server.remote import CommandView, DeviceRemote, RemoteError, SettingsChange, SettingsView

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=AUTH_ERRORS)

DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN.pattern, description="Device id")]


async def _remote(request: Request) -> DeviceRemote:
    remote: DeviceRemote = request.app.state.remote
    return remote


RemoteDep = Annotated[DeviceRemote, Depends(_remote)]


def _error(exc: RemoteError) -> ApiError:
    return ApiError(404 if exc.code.endswith("NOT_FOUND") else 503, exc.code, str(exc), exc.message_zh)


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
        await audit(principal, f"device.{body.name}", device_id, outcome="failed", detail={"error": str(exc)})
        raise _error(exc) from exc
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
    return await remote.recent_commands(device_id, limit=limit)


@router.get("/{device_id}/commands/{command_id}", summary="One command and its result")
async def get_command(
    principal: DeviceReader,
    device_id: DeviceIdPath,
    command_id: Annotated[str, Path(max_length=64)],
    reach: ReachDep,
    remote: RemoteDep,
) -> CommandView:
    await reach.device(principal, device_id)
    try:
        view = await remote.get_command(command_id)
    except RemoteError as exc:
        raise _error(exc) from exc
    if view.device_id != device_id:
        raise ApiError(404, "COMMAND_NOT_FOUND", f"command {command_id} not found", f"指令 {command_id} 不存在")
    return view


@router.get("/{device_id}/settings", summary="The merchant's settings: as saved, and whether the device holds them")
async def get_settings(
    principal: DeviceReader, device_id: DeviceIdPath, reach: ReachDep, remote: RemoteDep
) -> SettingsView:
    await reach.device(principal, device_id)
    return await remote.settings_of(device_id)


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
    try:
        view = await remote.change_settings(
            device_id, SettingsChange.model_validate(body.model_dump()), updated_by=principal.login
        )
    except RemoteError as exc:
        raise _error(exc) from exc
    await audit(
        principal,
        "device.settings",
        device_id,
        detail=body.model_dump(mode="json", exclude_defaults=True) | {"version": view.version},
    )
    return view


class Announcement(BaseModel):
    payment_id: str
    amount_fen: int
    channel: str
    kind: str
    received_at: datetime
    status: str  # played, pending, missed, refused, failed, silenced, duplicate, expired
    heard: bool
    latency_ms: float | None
    text: str | None
    reason: str | None


# What counts as the merchant having heard it (or chosen not to, by quiet hours or volume 0).
HEARD = ("played", "duplicate", "silenced")


@router.get("/{device_id}/announcements", summary="Recent announcements of a device: played or missed")
async def announcements(
    principal: DeviceReader,
    device_id: DeviceIdPath,
    request: Request,
    reach: ReachDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[Announcement]:
    await reach.device(principal, device_id)
    async with request.app.state.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT p.payment_id, p.amount_fen, p.channel, p.kind, p.received_at, dl.status,"
            " dl.status = ANY(%(heard)s) AS heard, dl.text, dl.reason,"
            " extract(epoch FROM dl.play_started_at - p.received_at) * 1000 AS latency_ms"
            " FROM deliveries dl JOIN payments p USING (payment_id) WHERE dl.device_id = %(d)s"
            " ORDER BY p.received_at DESC LIMIT %(limit)s",
            {"d": device_id, "limit": limit, "heard": list(HEARD)},
        )
        return [Announcement.model_validate(row) for row in await cur.fetchall()]
