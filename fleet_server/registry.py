"""Reading the device registry: what the API and pages show about devices."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.states import STATE_NAMES_ZH, DeviceState


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
    state: str | None
    state_zh: str | None
    state_since: datetime | None
    store_id: str | None
    agent_id: str | None


class DeviceDetail(DeviceView):
    first_seen: datetime
    boot_id: str | None
    installed_at: datetime | None
    install_address: str | None
    last_cell: str | None
    last_health: HealthView | None


class TimelineEntry(BaseModel):
    at: datetime
    kind: str  # state / event / announcement / task
    summary: str
    detail: dict[str, Any]


class Timeline(BaseModel):
    device_id: str
    start: datetime
    end: datetime
    entries: list[TimelineEntry]


class FleetSummary(BaseModel):
    devices: int
    online: int


_DEVICE_COLUMNS = (
    "d.device_id, COALESCE(d.serial, d.reported_serial) AS serial, d.model, d.firmware, d.online, d.presence_reason,"
    " d.last_seen, b.merchant_id, d.state, d.state_since, COALESCE(m.store_id, d.store_id) AS store_id,"
    " COALESCE(d.agent_id, st.agent_id) AS agent_id"
)
# A device with its place in the hierarchy, under the aliases every fleet query uses: d device,
# b binding, m merchant, st store (the merchant's, else the device's own), di district.
DEVICE_HIERARCHY: Final = (
    "devices d LEFT JOIN bindings b ON b.device_id = d.device_id"
    " LEFT JOIN merchants m ON m.merchant_id = b.merchant_id"
    " LEFT JOIN stores st ON st.store_id = COALESCE(m.store_id, d.store_id)"
    " LEFT JOIN districts di ON di.district_id = st.district_id"
)
_DEVICE_JOINS = f" FROM {DEVICE_HIERARCHY}"


def _with_state_name(row: dict[str, Any]) -> dict[str, Any]:
    state = row.get("state")
    row["state_zh"] = STATE_NAMES_ZH[DeviceState(state)] if state else None
    return row


class DeviceRegistry:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    async def list_devices(
        self,
        *,
        limit: int = 1000,
        offset: int = 0,
        state: str | None = None,
        serial: str | None = None,
        search: str | None = None,
        stores: frozenset[str] | None = None,
        merchant_id: str | None = None,
    ) -> list[DeviceView]:
        """Devices matching every filter given: `search` is a device id or serial number (whole,
        or its start); `stores` and `merchant_id` limit to a principal's reach."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_DEVICE_COLUMNS}{_DEVICE_JOINS}"
                " WHERE (%(state)s::text IS NULL OR d.state = %(state)s)"
                " AND (%(serial)s::text IS NULL OR d.serial = %(serial)s OR d.reported_serial = %(serial)s)"
                " AND (%(search)s::text IS NULL OR d.device_id = %(search)s OR d.serial = %(search)s"
                "  OR starts_with(d.serial, %(search)s) OR starts_with(d.device_id, %(search)s))"
                " AND (%(stores)s::text[] IS NULL OR st.store_id = ANY(%(stores)s))"
                " AND (%(merchant)s::text IS NULL OR b.merchant_id = %(merchant)s)"
                " ORDER BY d.device_id LIMIT %(limit)s OFFSET %(offset)s",
                {
                    "state": state,
                    "serial": serial,
                    "search": search,
                    "stores": sorted(stores) if stores is not None else None,
                    "merchant": merchant_id,
                    "limit": limit,
                    "offset": offset,
                },
            )
            return [DeviceView.model_validate(_with_state_name(row)) for row in await cur.fetchall()]

    async def get_device(self, device_id: str) -> DeviceDetail | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_DEVICE_COLUMNS}, d.first_seen, d.boot_id, d.installed_at, d.install_address,"
                f" d.last_cell{_DEVICE_JOINS} WHERE d.device_id = %s",
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
            return DeviceDetail.model_validate(_with_state_name(row))

    async def timeline(self, device_id: str, start: datetime, end: datetime, *, limit: int = 500) -> Timeline:
        """States, device events, announcements and tasks of one device in [start, end), newest first."""
        window = {"d": device_id, "start": start, "end": end, "limit": limit}
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT at, 'state' AS kind, state || ' (' || cause || ')' AS summary,"
                "  jsonb_build_object('state', state, 'previous', previous, 'cause', cause) || detail AS detail"
                " FROM device_states WHERE device_id = %(d)s AND at >= %(start)s AND at < %(end)s"
                " UNION ALL SELECT received_at, 'event', kind, detail FROM device_events"
                "  WHERE device_id = %(d)s AND ts >= %(start)s - interval '1 day' AND received_at >= %(start)s"
                "  AND received_at < %(end)s"
                " UNION ALL SELECT p.received_at, 'announcement', dl.status || ' ' || p.payment_id,"
                "  jsonb_build_object('payment_id', p.payment_id, 'status', dl.status, 'amount_fen', p.amount_fen,"
                "   'latency_ms', extract(epoch FROM dl.play_started_at - p.received_at) * 1000)"
                "  FROM deliveries dl JOIN payments p USING (payment_id)"
                "  WHERE dl.device_id = %(d)s AND p.received_at >= %(start)s AND p.received_at < %(end)s"
                " UNION ALL SELECT opened_at, 'task', kind || ' ' || status,"
                "  jsonb_build_object('task_id', task_id, 'kind', kind, 'status', status, 'evidence', evidence)"
                "  FROM tasks WHERE device_id = %(d)s AND opened_at < %(end)s"
                "  AND COALESCE(closed_at, 'infinity') >= %(start)s"
                " ORDER BY 1 DESC LIMIT %(limit)s",
                window,
            )
            entries = [TimelineEntry.model_validate(row) for row in await cur.fetchall()]
        return Timeline(device_id=device_id, start=start, end=end, entries=entries)

    async def summary(self) -> FleetSummary:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT count(*) AS devices, count(*) FILTER (WHERE online) AS online FROM devices")
            row = await cur.fetchone()
            return FleetSummary.model_validate(row)
