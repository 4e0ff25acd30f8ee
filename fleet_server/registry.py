"""Reading the device registry: what the API and pages show about devices."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel


class HealthView(BaseModel):
    ts: datetime
    received_at: datetime
    uptime_s: int | None
    rssi_dbm: int | None
    volume: int | None
    queue_depth: int | None
    played_total: int | None
    mem_rss_kb: int | None


class DeviceView(BaseModel):
    device_id: str
    serial: str | None
    model: str | None
    firmware: str | None
    online: bool
    presence_reason: str | None
    last_seen: datetime | None
    merchant_id: str | None


class DeviceDetail(DeviceView):
    first_seen: datetime
    boot_id: str | None
    last_health: HealthView | None


class FleetSummary(BaseModel):
    devices: int
    online: int


_DEVICE_COLUMNS = "d.device_id, d.serial, d.model, d.firmware, d.online, d.presence_reason, d.last_seen, b.merchant_id"


class DeviceRegistry:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def list_devices(self, *, limit: int = 1000, offset: int = 0) -> list[DeviceView]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices d LEFT JOIN bindings b USING (device_id)"  # noqa: S608 - constant columns.
                " ORDER BY d.device_id LIMIT %s OFFSET %s",
                (limit, offset),
            )
            return [DeviceView.model_validate(row) for row in await cur.fetchall()]

    async def get_device(self, device_id: str) -> DeviceDetail | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_DEVICE_COLUMNS}, d.first_seen, d.boot_id"  # noqa: S608 - constant columns.
                " FROM devices d LEFT JOIN bindings b USING (device_id) WHERE d.device_id = %s",
                (device_id,),
            )
            row: dict[str, Any] | None = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(
                "SELECT ts, received_at, uptime_s, rssi_dbm, volume, queue_depth, played_total, mem_rss_kb"
                " FROM device_health WHERE device_id = %s ORDER BY ts DESC LIMIT 1",
                (device_id,),
            )
            health = await cur.fetchone()
            row["last_health"] = HealthView.model_validate(health) if health else None
            return DeviceDetail.model_validate(row)

    async def summary(self) -> FleetSummary:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT count(*) AS devices, count(*) FILTER (WHERE online) AS online FROM devices")
            row = await cur.fetchone()
            return FleetSummary.model_validate(row)
