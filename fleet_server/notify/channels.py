"""Notification channels: where task news goes, for the whole fleet, a store or a field agent.

A channel's URL carries the robot's key (企业微信 `?key=`, 钉钉 `?access_token=`) and its secret
signs, so both are sealed with the field cipher (as merchants' phones are) under the channel's
own context; pages see the host and path only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final
from urllib.parse import urlsplit

import psycopg
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field, StringConstraints, field_validator

from fleet_server.contacts.cipher import FieldCipher
from fleet_server.db.fetch import fetch_models
from fleet_server.errors import NotifyError
from fleet_server.notify.formats import ROBOT_PER_MINUTE, ChannelKind, Notice
from fleet_server.notify.outbox import QUEUE_ONE

LIST: Final = (
    "SELECT c.channel_id, c.name, c.kind, c.store_id, c.agent_id, c.shown, c.secret IS NOT NULL AS signed,"
    " c.per_minute, c.enabled, c.created_at, c.created_by,"
    " count(o.*) FILTER (WHERE o.sent_at IS NULL AND o.gave_up_at IS NULL) AS pending,"
    " count(o.*) FILTER (WHERE o.gave_up_at IS NOT NULL) AS given_up,"
    " max(o.sent_at) AS last_sent_at,"
    " (array_agg(o.last_error ORDER BY o.notice_id DESC) FILTER (WHERE o.last_error IS NOT NULL))[1] AS last_error"
    " FROM notify_channels c LEFT JOIN notify_outbox o USING (channel_id)"
    " GROUP BY c.channel_id ORDER BY c.channel_id"
)
INSERT: Final = (
    "INSERT INTO notify_channels (name, kind, store_id, agent_id, target, shown, per_minute, created_by)"
    " VALUES (%s, %s, %s, %s, '', %s, %s, %s) RETURNING channel_id"
)
SEAL: Final = "UPDATE notify_channels SET target = %s, secret = %s WHERE channel_id = %s"
DELETE: Final = "DELETE FROM notify_channels WHERE channel_id = %s"
EXISTS: Final = "SELECT 1 FROM notify_channels WHERE channel_id = %s"

Url = Annotated[str, StringConstraints(pattern=r"^https?://[\x21-\x7e]{1,1000}$")]


class NewChannel(BaseModel):
    """A channel to add: its kind, URL (with the robot's key), secret (钉钉 加签, the webhook's
    HMAC key) and scope (a store, a field agent, or neither: the whole fleet)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    kind: ChannelKind
    url: Url
    secret: Annotated[str, StringConstraints(min_length=8, max_length=256)] | None = None
    store_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    agent_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    per_minute: Annotated[int, Field(ge=1, le=600)] = ROBOT_PER_MINUTE

    @field_validator("url")
    @classmethod
    def _a_url_with_a_host(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError as exc:  # "http://[": an unclosed IPv6 literal, a bad port
            raise ValueError(f"not a URL: {exc}") from exc
        if not host:
            raise ValueError("the URL names no host")
        return url


class Channel(BaseModel):
    channel_id: int
    name: str
    kind: ChannelKind
    store_id: str | None
    agent_id: str | None
    shown: str  # scheme, host and path: never the key
    signed: bool
    per_minute: int
    enabled: bool
    created_at: datetime
    created_by: str
    pending: int
    given_up: int
    last_sent_at: datetime | None
    last_error: str | None


def context(channel_id: int, field: str) -> str:
    return f"notify_channels.{field}:{channel_id}"


class Channels:
    def __init__(self, pool: AsyncConnectionPool, cipher: FieldCipher) -> None:
        self._pool = pool
        self.cipher = cipher

    async def add(self, new: NewChannel, *, by: str) -> int:
        if new.store_id is not None and new.agent_id is not None:
            raise NotifyError(
                "BAD_SCOPE", "a channel is for a store or a field agent, not both", "渠道只能属于门店或经纪人之一"
            )
        if new.kind is ChannelKind.WEBHOOK and not new.secret:
            raise NotifyError(
                "SECRET_NEEDED", "a webhook channel needs a secret to sign with", "Webhook 渠道需要签名密钥"
            )
        parts = urlsplit(new.url)
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        async with self._pool.connection() as conn, conn.transaction():
            try:
                cur = await conn.execute(
                    INSERT, (new.name, new.kind.value, new.store_id, new.agent_id, shown, new.per_minute, by)
                )
            except psycopg.errors.ForeignKeyViolation as exc:
                raise NotifyError(
                    "SCOPE_NOT_FOUND",
                    f"no such store or field agent: {new.store_id or new.agent_id}",
                    "门店或经纪人不存在",
                ) from exc
            row = await cur.fetchone()
            assert row is not None  # noqa: S101 - INSERT ... RETURNING answers one row
            channel_id = int(row[0])
            target = self.cipher.encrypt(new.url, context=context(channel_id, "target"))
            secret = self.cipher.encrypt(new.secret, context=context(channel_id, "secret")) if new.secret else None
            await conn.execute(SEAL, (target, secret, channel_id))
        return channel_id

    async def list(self) -> list[Channel]:
        return await fetch_models(self._pool, Channel, LIST)

    async def delete(self, channel_id: int) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(DELETE, (channel_id,))
            if cur.rowcount == 0:
                raise _not_found(channel_id)

    async def test(self, channel_id: int, now: datetime, *, by: str) -> None:
        """Queue a test message on the channel (sent like any other)."""
        notice = Notice(event="test", title_zh=f"测试消息（{by}）", title_en=f"Test message ({by})")
        async with self._pool.connection() as conn, conn.transaction():
            if await (await conn.execute(EXISTS, (channel_id,))).fetchone() is None:
                raise _not_found(channel_id)
            key = f"test:{now.isoformat()}"
            await conn.execute(QUEUE_ONE, (channel_id, key, notice.model_dump_json(), now, now))


def _not_found(channel_id: int) -> NotifyError:
    return NotifyError("CHANNEL_NOT_FOUND", f"channel {channel_id} not found", f"通知渠道 {channel_id} 不存在")
