"""Reading the device registry: what the API and pages show about devices (SQL in `queries`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.db.fetch import fetch_dicts, fetch_model, fetch_models, fetch_row
from fleet_server.db.hierarchy import WHOLE_FLEET, Reach, reach_params
from fleet_server.devices import queries
from fleet_server.devices.states import STATE_NAMES_ZH, DeviceState


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


class ClockView(BaseModel):
    """The device's clock: its own correction (trusted = board + `board_offset_ms`; a board 5 min
    fast is -300000), the server-measured `skew_ms` of its latest reports (its corrected time
    minus when they arrived), and the last connect refused because the clock was off."""

    board_offset_ms: int | None
    source: str | None
    error_ms: int | None
    skew_ms: int | None
    reported_at: datetime | None
    refused_skew_s: int | None
    refused_at: datetime | None


class DeviceDetail(DeviceView):
    first_seen: datetime
    boot_id: str | None
    installed_at: datetime | None
    install_address: str | None
    last_cell: str | None
    last_health: HealthView | None
    clock: ClockView | None = None


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
    clocks_off: int = 0  # devices whose clock is more than a minute off (see queries.COUNTS)


def _with_state_name(row: dict[str, Any]) -> dict[str, Any]:
    state = row.get("state")
    row["state_zh"] = STATE_NAMES_ZH[DeviceState(state)] if state else None
    return row


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


class Agent(BaseModel):
    agent_id: str
    name: str
    stores: list[str]


# Field agents and their stores: (). Rows: Agent.
AGENTS = (
    "SELECT a.agent_id, a.name, COALESCE(array_agg(s.store_id ORDER BY s.store_id)"
    " FILTER (WHERE s.store_id IS NOT NULL), '{}') AS stores"
    " FROM field_agents a LEFT JOIN stores s ON s.agent_id = a.agent_id GROUP BY a.agent_id, a.name ORDER BY 1"
)


class DeviceRegistry:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    async def agents(self) -> list[Agent]:
        return await fetch_models(self.pool, Agent, AGENTS)

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
        params = {
            "state": state,
            "serial": serial,
            "search": search,
            "stores": sorted(stores) if stores is not None else None,
            "merchant": merchant_id,
            "limit": limit,
            "offset": offset,
        }
        rows = await fetch_dicts(self._pool, queries.LIST_DEVICES, params)
        return [DeviceView.model_validate(_with_state_name(row)) for row in rows]

    async def get_device(self, device_id: str) -> DeviceDetail | None:
        async with self._pool.connection() as conn:
            rows = await fetch_dicts(conn, queries.DEVICE_DETAIL, (device_id,))
            if not rows:
                return None
            row = rows[0]
            row["last_health"] = await fetch_model(conn, HealthView, queries.LAST_HEALTH, (device_id,))
            row["clock"] = await fetch_model(conn, ClockView, queries.DEVICE_CLOCK, (device_id,))
        return DeviceDetail.model_validate(_with_state_name(row))

    async def known(self, device_id: str) -> bool:
        return await fetch_row(self._pool, queries.DEVICE_KNOWN, (device_id,)) is not None

    async def place(self, device_id: str) -> tuple[str | None, str | None] | None:
        """(store_id, merchant_id) of a device, or None for a device not in the registry."""
        row = await fetch_row(self._pool, queries.DEVICE_PLACE, (device_id,))
        return None if row is None else (row[0], row[1])

    async def timeline(
        self, device_id: str, start: datetime, end: datetime, *, limit: int = 500, reach: Reach = WHOLE_FLEET
    ) -> Timeline:
        """States, device events, announcements and tasks of one device in [start, end), newest
        first; its payments and tasks only as far as `reach` (`Principal.reach()`) owned them."""
        window = {"d": device_id, "start": start, "end": end, "limit": limit, **reach_params(reach)}
        entries = await fetch_models(self._pool, TimelineEntry, queries.TIMELINE, window)
        return Timeline(device_id=device_id, start=start, end=end, entries=entries)

    async def announcements(self, device_id: str, *, limit: int = 50, reach: Reach = WHOLE_FLEET) -> list[Announcement]:
        """The device's most recent announcements, newest first, heard or not: of the payments
        `reach` owned when they were made."""
        params = {"d": device_id, "limit": limit, **reach_params(reach)}
        return await fetch_models(self._pool, Announcement, queries.ANNOUNCEMENTS, params)

    async def summary(self) -> FleetSummary:
        summary = await fetch_model(self._pool, FleetSummary, queries.COUNTS)
        assert summary is not None  # noqa: S101 - an aggregate always returns a row.
        return summary
