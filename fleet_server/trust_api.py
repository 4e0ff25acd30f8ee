"""HTTP API of trust (`/api/v1/registry/...`): device credentials (provision once, rotate,
revoke) and merchants' contact details, which are stored encrypted and shown masked."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from firmware_protocols.credentials import encode_secret
from fleet_server.api import DeviceIdPath
from fleet_server.api_errors import NOT_FOUND, ApiError
from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, FleetReader, RegistryWriter
from fleet_server.auth.roles import Permission
from fleet_server.contacts import Contacts, MerchantContact, masked
from fleet_server.identity.store import CredentialStatus, DeviceCredentials, IdentityError

router = APIRouter(prefix="/api/v1/registry", tags=["trust"], responses=AUTH_ERRORS)


async def _credentials(request: Request) -> DeviceCredentials:
    credentials: DeviceCredentials = request.app.state.device_credentials
    return credentials


async def _contacts(request: Request) -> Contacts:
    contacts: Contacts = request.app.state.contacts
    return contacts


CredentialsDep = Annotated[DeviceCredentials, Depends(_credentials)]
ContactsDep = Annotated[Contacts, Depends(_contacts)]


class IssuedCredentials(BaseModel):
    device_id: str
    generation: int
    # Shown once: put it in the device's configuration as `device_secret`. It is not kept.
    device_secret: str


def _refused(exc: IdentityError) -> ApiError:
    status = 404 if exc.code == "NOT_PROVISIONED" else 409
    return ApiError(status, exc.code, str(exc), exc.message_zh)


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
        await audit(principal, "device.provision", device_id, outcome="refused", detail={"code": exc.code})
        raise _refused(exc) from exc
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
    try:
        status = await credentials.revoke(device_id, by=principal.login)
    except IdentityError as exc:
        raise _refused(exc) from exc
    await audit(principal, "device.revoke", device_id)
    return status


@router.get("/devices/{device_id}/credentials", summary="A device's credential status", responses=NOT_FOUND)
async def credential_status(_: FleetReader, credentials: CredentialsDep, device_id: DeviceIdPath) -> CredentialStatus:
    status = await credentials.status(device_id)
    if status is None:
        raise ApiError(404, "NOT_PROVISIONED", f"{device_id} has no credentials", f"设备 {device_id} 没有凭据")
    return status


@router.get("/merchants", summary="Merchants by id or phone, contact details masked (clear for admins, audited)")
async def merchants(
    principal: FleetReader,
    contacts: ContactsDep,
    audit: AuditDep,
    phone: Annotated[str | None, Query(max_length=32, pattern=r"^[0-9+ -]{5,32}$")] = None,
    merchant_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")] = None,
    clear: bool = False,
) -> list[MerchantContact]:
    if (phone is None) == (merchant_id is None):
        raise ApiError(422, "ONE_KEY", "give either phone or merchant_id", "请提供手机号或商户编号之一")
    if clear and not principal.may(Permission.REGISTRY_WRITE):
        raise ApiError(403, "FORBIDDEN", "only registry administrators see clear values", "只有管理员可查看明文")
    found = await contacts.merchants(merchant_id=merchant_id, phone=phone)
    if clear:
        await audit(principal, "merchant.contact.read", merchant_id or "by-phone", detail={"found": len(found)})
        return found
    return [masked(c) for c in found]
