"""The device lifecycle against the database: every action one transaction, logged in
`device_stages` (the API writes the audit log beside it).

    life = Lifecycle(pool)
    await life.allocate(["SPK9"], store_id="S01", agent_id=None, by="ops")
    change = await life.install("SPK9", "M0001", Position(31.23, 121.47, 12.0), by="agent1")
    ...the phone sends the device a test announcement (`remote`), then
    await life.commission("SPK9", command_id, by="agent1")

Install binds the device to the merchant (its 设备绑定成功 alert, published at once through
`on_alert` where this process runs the payment bridge, else by the bridge's retry scan), takes
the phone's position as the registered location and deploys the device (Signal.INSTALLED);
return, swap, scrap and loss retire it (Signal.RETIRE, `tasks.retire_in`), which takes it out of
the deployed figures from that moment and closes its open tasks. A swap moves the merchant and
the open tasks to the new device in the same transaction; the settings follow (`routes`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.db.fetch import fetch_dicts, fetch_models
from fleet_server.devices import rollups, tracker
from fleet_server.devices.bindings import Alert, bind_in, unbind_in
from fleet_server.devices.states import DeviceState, Signal
from fleet_server.devices.tracker import Observation
from fleet_server.errors import LifecycleError
from fleet_server.inspection.tasks import retire_in
from fleet_server.lifecycle import queries
from fleet_server.lifecycle.stages import ACTION_NAMES_ZH, STAGE_NAMES_ZH, Action, Stage, allowed, next_stage


class DeviceLife(BaseModel):
    device_id: str
    serial: str | None
    model: str | None
    stage: Stage | None  # None: registered before the lifecycle (counts as in service)
    stage_zh: str
    stage_since: datetime | None
    store_id: str | None
    agent_id: str | None
    merchant_id: str | None
    merchant_name: str | None
    state: str | None
    installed_at: datetime | None
    install_lat: float | None
    install_lon: float | None
    install_address: str | None
    allowed: list[Action]


class StageChange(BaseModel):
    device_id: str
    action: Action
    previous: Stage | None
    stage: Stage
    at: datetime
    merchant_id: str | None = None
    closed_tasks: list[int] = []
    moved_tasks: list[int] = []
    alert_id: str | None = None  # the 设备绑定成功 / 设备已解绑 the device was sent


class StageCount(BaseModel):
    store_id: str | None
    agent_id: str | None
    stage: Stage
    devices: int


class StageEntry(BaseModel):
    at: datetime
    stage: Stage
    previous: Stage | None
    action: Action
    by_login: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Position:
    """Where the phone was at install (WGS-84, as the browser's geolocation gives it)."""

    lat: float
    lon: float
    accuracy_m: float | None = None


def _life(row: dict[str, Any]) -> DeviceLife:
    stage = Stage(row["stage"]) if row["stage"] else None
    shown = stage or Stage.IN_SERVICE
    return DeviceLife.model_validate(
        {**row, "stage": stage, "stage_zh": STAGE_NAMES_ZH[shown], "allowed": allowed(stage)}
    )


def _refused(life: DeviceLife, action: Action) -> LifecycleError:
    return LifecycleError(
        "STAGE",
        f"device {life.device_id} is {(life.stage or Stage.IN_SERVICE).value}: {action.value} is not allowed"
        f" (allowed: {', '.join(a.value for a in life.allowed) or 'nothing'})",
        f"设备 {life.device_id} 当前为{life.stage_zh}，不能{ACTION_NAMES_ZH[action]}",
    )


class Lifecycle:
    def __init__(self, pool: AsyncConnectionPool, *, alert_ttl: timedelta = timedelta(minutes=10)) -> None:
        self._pool = pool
        self._ttl = alert_ttl
        # Publishes an alert at once (the payment bridge's, when this process runs it).
        self.on_alert: Callable[[Alert], None] | None = None

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    async def find(self, key: str) -> DeviceLife | None:
        """A device by its id or the serial number printed on it."""
        rows = await fetch_dicts(self._pool, queries.FIND, {"k": key})
        return _life(rows[0]) if rows else None

    async def counts(self) -> list[StageCount]:
        return await fetch_models(self._pool, StageCount, queries.COUNTS)

    async def history(self, device_id: str, *, limit: int = 100) -> list[StageEntry]:
        return await fetch_models(self._pool, StageEntry, queries.HISTORY, (device_id, limit))

    async def allocate(
        self, device_ids: list[str], *, store_id: str, agent_id: str | None, by: str, now: datetime
    ) -> list[StageChange]:
        """Allocate devices in stock (or allocated elsewhere) to a store, and to its agent unless
        another is named. All or none."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(queries.STORE, (store_id,))
            store = await cur.fetchone()
            if store is None:
                raise LifecycleError("STORE_NOT_FOUND", f"store {store_id} not found", f"门店 {store_id} 不存在")
            if agent_id is not None:
                await cur.execute(queries.AGENT_KNOWN, (agent_id,))
                if await cur.fetchone() is None:
                    raise LifecycleError("AGENT_NOT_FOUND", f"agent {agent_id} not found", f"经纪人 {agent_id} 不存在")
            changes = []
            for device_id in sorted(set(device_ids)):
                life = await self._lock(cur, device_id, Action.ALLOCATE)
                await cur.execute(queries.ALLOCATE, (store_id, agent_id or store[0], device_id))
                detail = {"store_id": store_id, "agent_id": agent_id or store[0]}
                changes.append(await self._record(cur, life, Action.ALLOCATE, by, now, detail))
        return changes

    async def install(
        self,
        device_id: str,
        merchant_id: str,
        position: Position | None,
        *,
        address: str | None,
        by: str,
        agent_id: str | None,
        now: datetime,
    ) -> StageChange:
        """Install an allocated device at a merchant of its store: bound (the device says
        设备绑定成功), located where the phone is, deployed from now."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            life = await self._lock(cur, device_id, Action.INSTALL)
            await self._merchant_of_store(cur, merchant_id, life.store_id)
            _, alert = await bind_in(conn, device_id, merchant_id, ttl=self._ttl)
            lat, lon = (position.lat, position.lon) if position else (None, None)
            await cur.execute(queries.INSTALL, (now, address, lat, lon, agent_id, device_id))
            detail = {
                "merchant_id": merchant_id,
                "lat": lat,
                "lon": lon,
                "accuracy_m": position and position.accuracy_m,
            }
            change = await self._record(cur, life, Action.INSTALL, by, now, detail)
            await tracker.apply(cur, [Observation(device_id, now, Signal.INSTALLED, "installed", {"by": by, **detail})])
        return self._tell(change.model_copy(update={"merchant_id": merchant_id}), alert)

    async def commission(self, device_id: str, command_id: str, *, by: str, now: datetime) -> StageChange:
        """An installed device whose test announcement (`command_id`, sent since the install)
        played: in service."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            life = await self._lock(cur, device_id, Action.COMMISSION)
            await cur.execute(queries.TEST_ANNOUNCE, (command_id, device_id, life.stage_since))
            row = await cur.fetchone()
            if row is None or row[0] != "succeeded":
                status = row[0] if row else "not sent since the install"
                raise LifecycleError(
                    "NOT_TESTED",
                    f"the test announcement {command_id} of device {device_id} has not played ({status})",
                    "测试播报尚未成功，请重试",
                )
            return await self._record(cur, life, Action.COMMISSION, by, now, {"command_id": command_id})

    async def give_back(self, device_id: str, note: str, *, by: str, now: datetime) -> StageChange:
        """Return a device (回收): an installed one is unbound (设备已解绑) and retired, its open
        tasks closed; an allocated one goes back to stock."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            life = await self._lock(cur, device_id, Action.RETURN)
            if life.stage is Stage.ALLOCATED:
                await cur.execute(queries.SHELVE, (device_id,))
                return await self._record(cur, life, Action.RETURN, by, now, {"note": note})
            alert = await unbind_in(conn, device_id, ttl=self._ttl)
            closed = await self._retire(cur, life, "returned", note, by, now)
            change = await self._record(cur, life, Action.RETURN, by, now, {"note": note, "closed_tasks": closed})
        return self._tell(change.model_copy(update={"closed_tasks": closed}), alert)

    async def swap(
        self, old_id: str, new_id: str, position: Position | None, *, by: str, agent_id: str | None, now: datetime
    ) -> tuple[StageChange, StageChange]:
        """换机: the new device (allocated to the old one's store) takes the old one's merchant,
        location and open tasks; the old one is returned. One transaction."""
        if old_id == new_id:
            raise LifecycleError("SAME_DEVICE", "a device cannot be swapped for itself", "新旧设备不能相同")
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await rollups.lock_shared(cur)
            first, second = sorted((old_id, new_id))  # device rows locked in id order: no deadlocks
            lives = {first: await self._lock(cur, first, None), second: await self._lock(cur, second, None)}
            old, new = lives[old_id], lives[new_id]
            for life, action in ((old, Action.SWAP_OUT), (new, Action.INSTALL)):
                if next_stage(life.stage, action) is None:
                    raise _refused(life, action)
            if old.merchant_id is None:
                raise LifecycleError("NOT_BOUND", f"device {old_id} has no merchant", f"设备 {old_id} 未绑定商户")
            await self._merchant_of_store(cur, old.merchant_id, new.store_id)
            await cur.execute(queries.MOVE_TASKS, (new_id, now, old_id))
            moved = sorted(int(r[0]) for r in await cur.fetchall())
            await unbind_in(conn, old_id, ttl=self._ttl, alert=False)  # broken: nobody to tell
            closed = await self._retire(cur, old, "swapped", f"swapped for {new_id}", by, now)
            out = await self._record(cur, old, Action.SWAP_OUT, by, now, {"new_device": new_id, "moved_tasks": moved})
            _, alert = await bind_in(conn, new_id, old.merchant_id, ttl=self._ttl)
            lat, lon = (position.lat, position.lon) if position else (old.install_lat, old.install_lon)
            await cur.execute(queries.INSTALL, (now, old.install_address, lat, lon, agent_id, new_id))
            detail = {"merchant_id": old.merchant_id, "old_device": old_id, "lat": lat, "lon": lon}
            into = await self._record(cur, new, Action.INSTALL, by, now, detail)
            await tracker.apply(cur, [Observation(new_id, now, Signal.INSTALLED, "swapped_in", {"by": by, **detail})])
        out = out.model_copy(update={"closed_tasks": closed, "moved_tasks": moved, "merchant_id": old.merchant_id})
        return out, self._tell(into.model_copy(update={"merchant_id": old.merchant_id, "moved_tasks": moved}), alert)

    async def move(self, device_id: str, action: Action, note: str, *, by: str, now: datetime) -> StageChange:
        """The ops actions on a device off the merchant's counter: repair, restock, scrap, and
        loss (挂失, lost or stolen: from any deployed stage; retired, its open tasks closed)."""
        if action not in (Action.REPAIR, Action.RESTOCK, Action.SCRAP, Action.LOSE):
            raise LifecycleError("ACTION", f"{action.value} is not done this way", "该操作不能这样执行")
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            life = await self._lock(cur, device_id, action)
            detail: dict[str, Any] = {"note": note}
            closed: list[int] = []
            if action is Action.RESTOCK:
                await cur.execute(queries.SHELVE, (device_id,))
            elif action in (Action.SCRAP, Action.LOSE) and life.state not in (None, DeviceState.RETIRED):
                await unbind_in(conn, device_id, ttl=self._ttl, alert=False)
                closed = await self._retire(cur, life, "lost" if action is Action.LOSE else "scrapped", note, by, now)
                detail["closed_tasks"] = closed
            change = await self._record(cur, life, action, by, now, detail)
        return change.model_copy(update={"closed_tasks": closed})

    # -- parts ---------------------------------------------------------------------------------

    async def _lock(self, cur: AsyncCursor[Any], device_id: str, action: Action | None) -> DeviceLife:
        """The device locked (the rollup lock first, as every writer of device rows), and
        checked to allow `action`."""
        await rollups.lock_shared(cur)
        await cur.execute(queries.LOCK, (device_id,))
        row = await cur.fetchone()
        if row is None:
            raise LifecycleError("DEVICE_NOT_FOUND", f"device {device_id} not found", f"设备 {device_id} 不存在")
        assert cur.description is not None  # noqa: S101 - a SELECT has columns
        life = _life(dict(zip((c.name for c in cur.description), row, strict=True)))
        if action is not None and next_stage(life.stage, action) is None:
            raise _refused(life, action)
        return life

    async def _merchant_of_store(self, cur: AsyncCursor[Any], merchant_id: str, store_id: str | None) -> None:
        await cur.execute(queries.MERCHANT, (merchant_id,))
        row = await cur.fetchone()
        if row is None:
            raise LifecycleError(
                "MERCHANT_NOT_FOUND", f"merchant {merchant_id} not found", f"商户 {merchant_id} 不存在"
            )
        if row[0] != store_id:
            raise LifecycleError(
                "WRONG_STORE",
                f"merchant {merchant_id} is a merchant of store {row[0]}; the device is allocated to {store_id}",
                f"商户 {row[1]} 不属于该设备下发的门店",
            )

    async def _retire(
        self, cur: AsyncCursor[Any], life: DeviceLife, reason: str, note: str, by: str, now: datetime
    ) -> list[int]:
        if life.state in (None, DeviceState.RETIRED):
            return []  # never deployed, or retired already (a lost device found again, say)
        _, closed = await retire_in(cur, life.device_id, reason, note, by=by, now=now)
        return closed

    async def _record(
        self, cur: AsyncCursor[Any], life: DeviceLife, action: Action, by: str, now: datetime, detail: dict[str, Any]
    ) -> StageChange:
        stage = next_stage(life.stage, action)
        assert stage is not None  # noqa: S101 - checked when the device was locked
        await cur.execute(queries.SET_STAGE, (stage.value, now, life.device_id))
        previous = life.stage.value if life.stage else None
        row = (life.device_id, now, stage.value, previous, action.value, by, json.dumps(detail, default=str))
        await cur.execute(queries.LOG_STAGE, row)
        return StageChange(device_id=life.device_id, action=action, previous=life.stage, stage=stage, at=now)

    def _tell(self, change: StageChange, alert: Alert | None) -> StageChange:
        """Publish the alert the change recorded (after its commit), where this process can."""
        if alert is None:
            return change
        if self.on_alert is not None:
            self.on_alert(alert)
        return change.model_copy(update={"alert_id": alert.alert_id})
