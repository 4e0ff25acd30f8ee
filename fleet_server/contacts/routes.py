"""HTTP route of merchants' contact details (`/api/v1/registry/merchants`): stored encrypted,
shown masked; the clear values only to registry administrators, and audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from fleet_server.auth.deps import AUTH_ERRORS, AuditDep, FleetReader
from fleet_server.auth.roles import Permission
from fleet_server.contacts.contacts import Contacts, MerchantContact, masked
from fleet_server.errors import ApiError
from fleet_server.http.services import provide

ContactsDep = Annotated[Contacts, Depends(provide(Contacts))]

router = APIRouter(prefix="/api/v1/registry", tags=["trust"], responses=AUTH_ERRORS)


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
