"""The API's side of auth: who is asking (bearer token or session cookie), whether their role
may, and whether the device or store is within their reach. Refusals are audited.

    @router.get("/devices/{device_id}")
    async def get_device(principal: DeviceReader, device_id: str, reach: ReachDep): ...
        await reach.device(principal, device_id)

A cookie alone never changes anything: a state-changing request signed in by cookie also
carries the session's CSRF token in `X-CSRF-Token` (the pages read it from `/auth/me`).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Annotated, Any, Final, NoReturn, TypeVar

from fastapi import Depends, Request

from fleet_server.auth.roles import Permission, Principal
from fleet_server.auth.store import AuthStore
from fleet_server.devices.registry import DeviceRegistry
from fleet_server.errors import ApiError
from fleet_server.http.errors import ErrorResponse
from fleet_server.http.services import provide, services_of

SESSION_COOKIE: Final = "hd_session"
CSRF_HEADER: Final = "X-CSRF-Token"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
T = TypeVar("T")

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}}


AuthDep = Annotated[AuthStore, Depends(provide(AuthStore))]


class Audit:
    """The audit log as a route writes it: who acted is passed in, where from is the request's."""

    def __init__(self, request: Request, store: AuthStore) -> None:
        self._request = request
        self._store = store

    async def __call__(
        self,
        principal: Principal | None,
        action: str,
        target: str,
        *,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
        login: str | None = None,
    ) -> None:
        client = self._request.client
        await self._store.audit(
            principal,
            action,
            target,
            outcome=outcome,
            detail=detail,
            client_ip=client.host if client else None,
            login=login,
        )


async def _audit(request: Request, store: AuthDep) -> Audit:
    return Audit(request, store)


AuditDep = Annotated[Audit, Depends(_audit)]


def presented_token(request: Request) -> tuple[str, bool]:
    """The token a request signs in with, and whether it came in the session cookie (a bearer
    token wins); "" when there is none."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip(), False
    return request.cookies.get(SESSION_COOKIE, ""), True


async def current_principal(request: Request, store: AuthDep, audit: AuditDep) -> Principal:
    token, via_cookie = presented_token(request)
    if not token:
        raise ApiError(401, "NOT_SIGNED_IN", "sign in first: a bearer token or the session cookie", "请先登录")
    principal = await store.resolve(token)
    if principal is None:
        raise ApiError(
            401, "SESSION_ENDED", "the session or token is unknown, expired or revoked", "登录已失效，请重新登录"
        )
    if via_cookie and request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not secrets.compare_digest(sent.encode(), principal.csrf.encode()):
            await audit(principal, "auth.csrf_refused", request.url.path, outcome="denied")
            raise ApiError(403, "CSRF_TOKEN", f"a signed-in page sends {CSRF_HEADER}", "请求缺少页面校验码，请刷新页面")
    return replace(principal, via_cookie=via_cookie)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require(permission: Permission) -> Callable[[Request, Principal, Audit], Awaitable[Principal]]:
    """A dependency: the principal, if their role has `permission`; 403 (audited) otherwise."""

    async def dependency(request: Request, principal: PrincipalDep, audit: AuditDep) -> Principal:
        if not principal.may(permission):
            detail = {"needs": permission.value, "method": request.method}
            await audit(principal, "auth.denied", request.url.path, outcome="denied", detail=detail)
            raise ApiError(
                403,
                "FORBIDDEN",
                f"the {principal.role} role may not do this ({permission})",
                "您的账号没有此操作的权限",
            )
        return principal

    return dependency


FleetReader = Annotated[Principal, Depends(require(Permission.FLEET_READ))]
DeviceReader = Annotated[Principal, Depends(require(Permission.DEVICE_READ))]
DeviceCommander = Annotated[Principal, Depends(require(Permission.DEVICE_COMMAND))]
SettingsWriter = Annotated[Principal, Depends(require(Permission.DEVICE_SETTINGS))]
TaskReader = Annotated[Principal, Depends(require(Permission.TASK_READ))]
TaskWorker = Annotated[Principal, Depends(require(Permission.TASK_WORK))]
TaskAssigner = Annotated[Principal, Depends(require(Permission.TASK_ASSIGN))]
RegistryWriter = Annotated[Principal, Depends(require(Permission.REGISTRY_WRITE))]
OtaReader = Annotated[Principal, Depends(require(Permission.OTA_READ))]
OtaWriter = Annotated[Principal, Depends(require(Permission.OTA_WRITE))]
PaymentReader = Annotated[Principal, Depends(require(Permission.PAYMENT_READ))]
BindingWriter = Annotated[Principal, Depends(require(Permission.BINDING_WRITE))]
UsersAdmin = Annotated[Principal, Depends(require(Permission.USERS_ADMIN))]
AuditReader = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]
QuarantineAdmin = Annotated[Principal, Depends(require(Permission.QUARANTINE_ADMIN))]
FiguresRebuilder = Annotated[Principal, Depends(require(Permission.FIGURES_REBUILD))]
NotifyAdmin = Annotated[Principal, Depends(require(Permission.NOTIFY_ADMIN))]
LifecycleReader = Annotated[Principal, Depends(require(Permission.LIFECYCLE_READ))]
Installer = Annotated[Principal, Depends(require(Permission.DEVICE_INSTALL))]


class Reach:
    """Whether what a request names is within the principal's reach, one rule per kind of
    record (`db.hierarchy`): a device as placed now (the whole fleet for ops and the backend, the
    stores assigned for a field agent, their own devices for a merchant); a payment, task,
    command or settings by the merchant and store of the period it was made in, looked up by its
    store with the principal's reach and handed to `found`.

    Out of reach is a 403 (audited) for those who do not see the whole fleet, the same for an
    id that does not exist: nobody learns which ids exist outside their reach."""

    def __init__(self, request: Request, audit: Audit) -> None:
        self._path = request.url.path
        self._audit = audit
        self._services = services_of(request.app)

    async def device(self, principal: Principal, device_id: str) -> None:
        """Return if `device_id` is within reach; 403 (audited) otherwise."""
        if principal.sees_whole_fleet:
            return
        place = await self._services.get(DeviceRegistry).place(device_id)
        if place is not None and within_reach(principal, store_id=place[0], merchant_id=place[1]):
            return
        await self._refuse(principal, device_id, "device")

    async def found(self, principal: Principal, record: T | None, what: str, target: str, missing: ApiError) -> T:
        """`record` as its store looked it up within the principal's reach; None: `missing` (a
        404) for those who see the whole fleet, a 403 (audited) for the others."""
        if record is None:
            if principal.sees_whole_fleet:
                raise missing
            await self._refuse(principal, target, what)
        return record

    async def _refuse(self, principal: Principal, target: str, what: str) -> NoReturn:
        detail = {"path": self._path, "what": what}
        await self._audit(principal, "auth.out_of_reach", target, outcome="denied", detail=detail)
        raise ApiError(403, "OUT_OF_REACH", f"{what} {target} is not one of yours", _OUT_OF_REACH_ZH[what])


_OUT_OF_REACH_ZH: Final = {
    "device": "该设备不在您负责的范围内",
    "task": "该工单不在您负责的范围内",
    "payment": "该笔支付不在您的范围内",
    "command": "该指令不在您的范围内",
}


def within_reach(principal: Principal, *, store_id: str | None, merchant_id: str | None) -> bool:
    stores, merchant = principal.reach()
    if merchant is not None:
        return merchant_id == merchant
    return stores is None or (store_id is not None and store_id in stores)


async def _reach(request: Request, audit: AuditDep) -> Reach:
    return Reach(request, audit)


ReachDep = Annotated[Reach, Depends(_reach)]
