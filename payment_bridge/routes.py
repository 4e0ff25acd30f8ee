"""HTTP API of the payment bridge: notifications in, bindings, payment and delivery status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, StringConstraints

from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.auth.deps import AuditDep, BindingWriter, PaymentReader, ReachDep
from fleet_server.devices.bindings import Binding
from fleet_server.errors import ApiError, BindingError
from fleet_server.http.errors import NOT_FOUND, ErrorResponse
from fleet_server.http.services import HttpPolicy, provide, services_of
from payment_bridge.bridge import PaymentBridge
from payment_bridge.doors import Door
from payment_bridge.doorway import NotificationAccepted, WechatPayError, answer
from payment_bridge.store import DeliverySummary, NotAnnounced, PaymentStore, PaymentView

StoreDep = Annotated[PaymentStore, Depends(provide(PaymentStore))]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN.pattern)]
MerchantId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]

router = APIRouter(prefix="/api/v1", tags=["payments"])


async def _door(request: Request, door: Door) -> Response:
    """A notification through `door`, answered by `doorway.answer` (as `haodian server` answers
    it, there without this framework on the way: `doorway.NotificationDoors`)."""
    services = services_of(request.app)
    host = request.client.host if request.client else "-"
    bridge = services.get(PaymentBridge)
    return await answer(bridge, services.find(HttpPolicy), door, await request.body(), request.headers, host)


@router.post(
    "/notifications/backend",
    summary="Payment notification from the aggregated-payment backend (RSA2-signed JSON)",
    response_model=NotificationAccepted,
    responses={code: {"model": ErrorResponse} for code in (400, 401, 413, 429)},
)
async def backend_notification(request: Request) -> Response:
    return await _door(request, "backend")


_TEXT_ANSWERS: dict[int | str, dict[str, Any]] = {
    code: {"content": {"text/plain": {}}} for code in (400, 401, 413, 429, 503)
}


@router.post(
    "/notifications/alipay",
    summary="Alipay asynchronous notification (form, RSA2); answers the literal `success` once recorded",
    response_class=PlainTextResponse,
    responses=_TEXT_ANSWERS,
)
async def alipay_notification(request: Request) -> Response:
    return await _door(request, "alipay")


@router.post(
    "/notifications/unionpay",
    summary="UnionPay (ACP 5.1.0) back notification (form, RSA with the certificate it carries); 200 once recorded",
    response_class=PlainTextResponse,
    responses=_TEXT_ANSWERS,
)
async def unionpay_notification(request: Request) -> Response:
    return await _door(request, "unionpay")


@router.post(
    "/notifications/wechatpay",
    summary="WeChat Pay API v3 notification (signed, AES-256-GCM); 204 once recorded",
    status_code=204,
    responses={code: {"model": WechatPayError} for code in (400, 401, 413, 429, 503)},
)
async def wechatpay_notification(request: Request) -> Response:
    return await _door(request, "wechatpay")


@router.get(
    "/payments/not-announced",
    summary="Payments no device played (no bound device, missed TTL, expired, refused, failed), newest first",
)
async def not_announced(
    principal: PaymentReader,
    store: StoreDep,
    merchant_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601 with zone)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[NotAnnounced]:
    if since is not None and since.tzinfo is None:
        raise ApiError(400, "TIME_WITHOUT_ZONE", "since needs a time zone", "since 需要带时区")
    # merchant_id narrows within the caller's reach; it never widens it.
    return await store.not_announced(merchant_id=merchant_id, since=since, limit=limit, reach=principal.reach())


@router.get("/payments/{payment_id}", summary="A payment and its per-device deliveries", responses=NOT_FOUND)
async def get_payment(
    principal: PaymentReader, store: StoreDep, reach: ReachDep, payment_id: Annotated[str, Path(max_length=64)]
) -> PaymentView:
    found = await store.payment(payment_id, reach=principal.reach())
    missing = ApiError(404, "PAYMENT_NOT_FOUND", f"payment {payment_id} not found", f"支付 {payment_id} 不存在")
    return await reach.found(principal, found, "payment", payment_id, missing)


@router.get(
    "/deliveries/summary",
    summary="Announcement delivery rate and latency: a merchant's own, a field agent's stores', or the fleet's",
)
async def delivery_summary(
    principal: PaymentReader,
    store: StoreDep,
    hours: Annotated[int, Query(ge=1, le=24 * 31, description="of the payments received in the last N hours")] = 24,
) -> DeliverySummary:
    return await store.recent_summary(hours=hours, reach=principal.reach())


class BindRequest(BaseModel):
    device_id: DeviceId
    merchant_id: MerchantId


BridgeDep = Annotated[PaymentBridge, Depends(provide(PaymentBridge))]


@router.post(
    "/bindings",
    summary="Bind a registered device to a registered merchant (one merchant per device); the device says so",
    responses={422: {"model": ErrorResponse}},
)
async def bind(principal: BindingWriter, bridge: BridgeDep, body: BindRequest, audit: AuditDep) -> Binding:
    try:
        binding = await bridge.bind(body.device_id, body.merchant_id)
    except BindingError as exc:
        await audit(principal, "binding.bind", body.device_id, outcome="refused", detail={"code": exc.code})
        raise
    await audit(principal, "binding.bind", body.device_id, detail={"merchant_id": body.merchant_id})
    return binding


@router.delete("/bindings/{device_id}", summary="Unbind a device", status_code=204, responses=NOT_FOUND)
async def unbind(
    principal: BindingWriter,
    bridge: BridgeDep,
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN.pattern)],
    audit: AuditDep,
) -> None:
    await bridge.unbind(device_id)
    await audit(principal, "binding.unbind", device_id)


@router.get("/bindings", summary="Bindings, by merchant, device id or device serial number")
async def bindings(
    _: BindingWriter,
    bridge: BridgeDep,
    merchant_id: Annotated[str | None, Query(max_length=64)] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    serial: Annotated[str | None, Query(max_length=64)] = None,
) -> list[Binding]:
    return await bridge.bindings.bindings(merchant_id=merchant_id, device_id=device_id, serial=serial)
