"""HTTP routes of the device lifecycle (`/api/v1/lifecycle`): stock and allocation by ops;
install, the test announcement that closes it, return and swap by the store's field agent
(within reach: the device's store, and the merchant of that store) or ops; repair, restock,
scrap and loss by ops. Every change audited."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query
from pydantic import BaseModel, Field

from fleet_server.auth.deps import (
    AUTH_ERRORS,
    AuditDep,
    FleetReader,
    Installer,
    LifecycleReader,
    ReachDep,
    RegistryWriter,
)
from fleet_server.auth.roles import Principal
from fleet_server.db.fetch import fetch_models
from fleet_server.errors import LifecycleError
from fleet_server.http.errors import NOT_FOUND
from fleet_server.http.params import DeviceIdPath
from fleet_server.http.services import provide
from fleet_server.lifecycle import queries
from fleet_server.lifecycle.book import DeviceLife, Lifecycle, Position, StageChange, StageCount, StageEntry
from fleet_server.lifecycle.stages import Action
from fleet_server.lifecycle.stock import StockReport, stock
from fleet_server.remote.remote import DeviceRemote, SettingsChange

LifecycleDep = Annotated[Lifecycle, Depends(provide(Lifecycle))]
RemoteDep = Annotated[DeviceRemote, Depends(provide(DeviceRemote))]
Key = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Note = Annotated[str, Field(max_length=500)]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class OpsAction(StrEnum):
    """What ops do to a device off the merchant's counter (`Lifecycle.move`)."""

    REPAIR = Action.REPAIR.value
    RESTOCK = Action.RESTOCK.value
    SCRAP = Action.SCRAP.value
    LOSE = Action.LOSE.value


router = APIRouter(prefix="/api/v1/lifecycle", tags=["lifecycle"], responses=AUTH_ERRORS)


class Where(BaseModel):
    """The phone's position (the browser's geolocation), when it has one."""

    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    accuracy_m: float | None = Field(default=None, ge=0, le=100_000)

    def position(self) -> Position | None:
        return None if self.lat is None or self.lon is None else Position(self.lat, self.lon, self.accuracy_m)


class InstallBody(Where):
    merchant_id: Id
    address: Annotated[str | None, Field(max_length=200)] = None


class SwapBody(Where):
    new_device: Id  # the new device's id or the serial printed on it


class CommissionBody(BaseModel):
    command_id: Id


class NoteBody(BaseModel):
    note: Note = ""


class AllocateBody(BaseModel):
    device_ids: Annotated[list[Id], Field(min_length=1, max_length=10_000)]
    store_id: Id
    agent_id: Id | None = None


class MerchantChoice(BaseModel):
    merchant_id: str
    name: str
    store_id: str


class Swapped(BaseModel):
    old: StageChange
    new: StageChange


def _not_found(key: str) -> LifecycleError:
    return LifecycleError("DEVICE_NOT_FOUND", f"no device {key} (device id or serial)", f"未找到设备 {key}")


async def _device(life: Lifecycle, reach: ReachDep, principal: Principal, key: str) -> DeviceLife:
    """A device by id or serial, within reach (a 403 for a field agent whatever the key)."""
    found = await life.find(key)
    if found is None:
        if principal.sees_whole_fleet:
            raise _not_found(key)
        await reach.device(principal, key)  # refuses, audited: nobody learns which ids exist
        raise _not_found(key)
    await reach.device(principal, found.device_id)
    return found


@router.get("/devices/{key}", summary="A device's stage in its life, by device id or serial", responses=NOT_FOUND)
async def device_life(principal: LifecycleReader, life: LifecycleDep, reach: ReachDep, key: Key) -> DeviceLife:
    return await _device(life, reach, principal, key)


@router.get("/devices/{device_id}/history", summary="A device's changes of stage, newest first")
async def device_history(
    principal: LifecycleReader, life: LifecycleDep, reach: ReachDep, device_id: DeviceIdPath
) -> list[StageEntry]:
    await reach.device(principal, device_id)
    return await life.history(device_id)


@router.get("/counts", summary="Devices by store, agent and stage (stock and deployed)")
async def counts(_: FleetReader, life: LifecycleDep) -> list[StageCount]:
    return await life.counts()


@router.get("/merchants", summary="Merchants to install for: of the stores within reach, or of one")
async def merchants(
    principal: LifecycleReader,
    life: LifecycleDep,
    store_id: Annotated[str | None, Query(max_length=64)] = None,
) -> list[MerchantChoice]:
    stores, merchant = principal.reach()
    if merchant is not None:
        return []  # a merchant installs nothing
    params = {"stores": sorted(stores) if stores is not None else None, "store": store_id}
    return await fetch_models(life.pool, MerchantChoice, queries.MERCHANTS, params)


@router.post("/stock", summary="入库: devices into stock from CSV (device_id, serial, model); a dry run by default")
async def stock_csv(
    principal: RegistryWriter,
    life: LifecycleDep,
    audit: AuditDep,
    body: Annotated[str, Body(media_type="text/csv", max_length=16 * 1024 * 1024)],
    dry_run: bool = True,
) -> StockReport:
    report = await stock(life.pool, body, dry_run=dry_run, by=principal.login, now=datetime.now(tz=UTC))
    if not dry_run:
        await audit(principal, "lifecycle.stock", "stock", detail=report.model_dump(mode="json", exclude={"problems"}))
    return report


@router.post("/allocate", summary="下发: allocate devices in stock to a store (and its agent, or one named)")
async def allocate(
    principal: RegistryWriter, life: LifecycleDep, audit: AuditDep, body: AllocateBody
) -> list[StageChange]:
    changes = await life.allocate(
        body.device_ids, store_id=body.store_id, agent_id=body.agent_id, by=principal.login, now=datetime.now(tz=UTC)
    )
    await audit(principal, "lifecycle.allocate", body.store_id, detail=body.model_dump(mode="json"))
    return changes


@router.post(
    "/devices/{key}/install", summary="装机: bind an allocated device at a merchant of its store; it says 设备绑定成功"
)
async def install(
    principal: Installer, life: LifecycleDep, reach: ReachDep, audit: AuditDep, key: Key, body: InstallBody
) -> StageChange:
    device = await _device(life, reach, principal, key)
    change = await life.install(
        device.device_id,
        body.merchant_id,
        body.position(),
        address=body.address,
        by=principal.login,
        agent_id=principal.agent_id,
        now=datetime.now(tz=UTC),
    )
    await audit(principal, "lifecycle.install", device.device_id, detail=body.model_dump(mode="json"))
    return change


@router.post("/devices/{device_id}/commission", summary="The test announcement played: the install is done, in service")
async def commission(
    principal: Installer,
    life: LifecycleDep,
    reach: ReachDep,
    audit: AuditDep,
    device_id: DeviceIdPath,
    body: CommissionBody,
) -> StageChange:
    await reach.device(principal, device_id)
    change = await life.commission(device_id, body.command_id, by=principal.login, now=datetime.now(tz=UTC))
    await audit(principal, "lifecycle.commission", device_id, detail=body.model_dump(mode="json"))
    return change


@router.post("/devices/{device_id}/return", summary="回收: unbind and take the device back (its open tasks closed)")
async def give_back(
    principal: Installer, life: LifecycleDep, reach: ReachDep, audit: AuditDep, device_id: DeviceIdPath, body: NoteBody
) -> StageChange:
    await reach.device(principal, device_id)
    change = await life.give_back(device_id, body.note, by=principal.login, now=datetime.now(tz=UTC))
    await audit(principal, "lifecycle.return", device_id, detail=change.model_dump(mode="json"))
    return change


@router.post(
    "/devices/{device_id}/swap",
    summary="换机: a device from the store's stock takes this one's merchant, settings and open tasks",
)
async def swap(
    principal: Installer,
    life: LifecycleDep,
    remote: RemoteDep,
    reach: ReachDep,
    audit: AuditDep,
    device_id: DeviceIdPath,
    body: SwapBody,
) -> Swapped:
    await reach.device(principal, device_id)
    new = await _device(life, reach, principal, body.new_device)
    settings = await remote.settings_of(device_id)
    old_change, new_change = await life.swap(
        device_id,
        new.device_id,
        body.position(),
        by=principal.login,
        agent_id=principal.agent_id,
        now=datetime.now(tz=UTC),
    )
    if settings.version is not None:  # the merchant's settings follow, signed for the new device
        change = SettingsChange(volume=settings.volume, repeat=settings.repeat, quiet_hours=settings.quiet_hours)
        await remote.change_settings(new.device_id, change, updated_by=principal.login)
    await audit(
        principal, "lifecycle.swap", device_id, detail={"new_device": new.device_id, "settings": settings.version}
    )
    return Swapped(old=old_change, new=new_change)


@router.post("/devices/{device_id}/{action}", summary="Ops: repair (送修), restock (入库), scrap (报废), lose (挂失)")
async def ops_action(
    principal: RegistryWriter,
    life: LifecycleDep,
    audit: AuditDep,
    device_id: DeviceIdPath,
    action: OpsAction,
    body: NoteBody,
) -> StageChange:
    change = await life.move(device_id, Action(action.value), body.note, by=principal.login, now=datetime.now(tz=UTC))
    await audit(principal, f"lifecycle.{action.value}", device_id, detail=change.model_dump(mode="json"))
    return change
