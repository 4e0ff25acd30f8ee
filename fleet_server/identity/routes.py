"""HTTP routes of device identity (`/api/v1/registry/devices/{id}/credentials`): provision once,
rotate, revoke, and read a device's credential status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from firmware_protocols.credentials import encode_secret
from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, FleetReader, RegistryWriter
from fleet_server.errors import ApiError, IdentityError
from fleet_server.http.errors import NOT_FOUND
from fleet_server.http.params import DeviceIdPath
from fleet_server.http.services import provide
from fleet_server.identity.store import CredentialStatus, DeviceCredentials

CredentialsDep = Annotated[DeviceCredentials, Depends(provide(DeviceCredentials))]

router = APIRouter(prefix="/api/v1/registry", tags=["trust"], responses=AUTH_ERRORS)


class IssuedCredentials(BaseModel):
    device_id: str
    generation: int
    # Shown once: put it in the device's configuration as `device_secret`. It is not kept.
    device_secret: str


@router.post(
    "/devices/{device_id}/credentials",
    summary="Issue a device its secret (once; again only with rotate=true, which retires the old one)",
    responses={409: {"description": "Already provisioned and not rotating"}},
)
async def provision(
    principal: RegistryWriter,
    credentials: CredentialsDep,
    audit: AuditDep,
    device_id: DeviceIdPath,
    rotate: bool = False,
) -> IssuedCredentials:
    try:
        issued = await credentials.provision(device_id, by=principal.login, rotate=rotate)
    except IdentityError as exc:
        # Refused all the same (the one error handler answers it); the attempt is on record.
        await audit(principal, "device.provision", device_id, outcome="refused", detail={"code": exc.code})
        raise
    await audit(principal, "device.provision", device_id, detail={"generation": issued.generation, "rotate": rotate})
    return IssuedCredentials(
        device_id=issued.device_id, generation=issued.generation, device_secret=encode_secret(issued.secret)
    )


@router.post(
    "/devices/{device_id}/credentials/revoke",
    summary="Revoke a device's credentials: refused by the broker from its next connect",
    responses=NOT_FOUND,
)
async def revoke(
    principal: RegistryWriter, credentials: CredentialsDep, audit: AuditDep, device_id: DeviceIdPath
) -> CredentialStatus:
    status = await credentials.revoke(device_id, by=principal.login)
    await audit(principal, "device.revoke", device_id)
    return status


@router.get("/devices/{device_id}/credentials", summary="A device's credential status", responses=NOT_FOUND)
async def credential_status(_: FleetReader, credentials: CredentialsDep, device_id: DeviceIdPath) -> CredentialStatus:
    status = await credentials.status(device_id)
    if status is None:
        raise ApiError(404, "NOT_PROVISIONED", f"{device_id} has no credentials", f"设备 {device_id} 没有凭据")
    return status
