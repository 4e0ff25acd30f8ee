"""HTTP routes of the notification channels (`/api/v1/notify`): every ops account sees them (never
their keys); ops-admin adds, removes and tests them, audited."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, FleetReader, NotifyAdmin
from fleet_server.http.errors import NOT_FOUND
from fleet_server.http.services import provide
from fleet_server.notify.channels import Channel, Channels, NewChannel

ChannelsDep = Annotated[Channels, Depends(provide(Channels))]
ChannelId = Annotated[int, Path(ge=1, le=2**62)]

router = APIRouter(prefix="/api/v1/notify", tags=["ops"], responses=AUTH_ERRORS)


@router.get("/channels", summary="Notification channels, with what each has pending and its last error")
async def list_channels(_: FleetReader, channels: ChannelsDep) -> list[Channel]:
    return await channels.list()


@router.post("/channels", summary="Add a channel: 企业微信 robot, 钉钉 robot or signed webhook", status_code=201)
async def add_channel(principal: NotifyAdmin, channels: ChannelsDep, audit: AuditDep, body: NewChannel) -> Channel:
    channel_id = await channels.add(body, by=principal.login)
    detail = {"kind": body.kind.value, "store_id": body.store_id, "agent_id": body.agent_id, "name": body.name}
    await audit(principal, "notify.channel_add", str(channel_id), detail=detail)
    return next(c for c in await channels.list() if c.channel_id == channel_id)


@router.delete(
    "/channels/{channel_id}", summary="Remove a channel and what it has queued", status_code=204, responses=NOT_FOUND
)
async def delete_channel(principal: NotifyAdmin, channels: ChannelsDep, audit: AuditDep, channel_id: ChannelId) -> None:
    await channels.delete(channel_id)
    await audit(principal, "notify.channel_delete", str(channel_id))


@router.post(
    "/channels/{channel_id}/test", summary="Queue a test message on the channel", status_code=202, responses=NOT_FOUND
)
async def test_channel(principal: NotifyAdmin, channels: ChannelsDep, audit: AuditDep, channel_id: ChannelId) -> None:
    await channels.test(channel_id, datetime.now(tz=UTC), by=principal.login)
    await audit(principal, "notify.channel_test", str(channel_id))
