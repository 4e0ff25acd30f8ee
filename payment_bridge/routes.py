"""HTTP API of the payment bridge: notifications in, bindings, payment and delivery status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, StringConstraints

from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.auth.deps import AuditDep, BindingWriter, PaymentReader, ReachDep
from fleet_server.devices.bindings import Binding
from fleet_server.errors import ApiError, BindingError
from fleet_server.http.errors import NOT_FOUND, ErrorResponse
from fleet_server.http.ratelimit import too_many
from fleet_server.http.services import HttpPolicy, provide, services_of
from payment_bridge.alipay import ANSWER_FAILURE, ANSWER_SUCCESS
from payment_bridge.bridge import PaymentBridge
from payment_bridge.doors import Door
from payment_bridge.errors import NotificationRejected
from payment_bridge.store import DeliverySummary, NotAnnounced, PaymentStore, PaymentView

_MESSAGES_ZH = {
    "BODY_TOO_LARGE": "通知内容过大",
    "SIGN_TYPE_UNSUPPORTED": "不支持的签名类型",
    "SIGNATURE_MISSING": "缺少签名",
    "SIGNATURE_INVALID": "签名验证失败",
    "NOTIFICATION_INVALID": "通知格式错误",
    "CHARSET_UNSUPPORTED": "不支持的字符集",
    "SERIAL_UNKNOWN": "未知的平台证书序列号",
    "TIMESTAMP_OUT_OF_WINDOW": "通知时间戳超出允许范围",
    "DECRYPT_FAILED": "通知内容解密失败",
    "KEY_NOT_CONFIGURED": "未配置平台密钥",
}


StoreDep = Annotated[PaymentStore, Depends(provide(PaymentStore))]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN.pattern)]
MerchantId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]

router = APIRouter(prefix="/api/v1", tags=["payments"])


class NotificationAccepted(BaseModel):
    code: str = "SUCCESS"
    payment_id: str
    duplicate: bool
    devices: int


def _limited(request: Request) -> Response | None:
    """A 429 for a client sending notifications faster than the configured limit."""
    limiter = services_of(request.app).get(HttpPolicy).notify_limiter
    return too_many(limiter, request.client.host if request.client else "-", "notifications", "通知")


@router.post(
    "/notifications/backend",
    summary="Payment notification from the aggregated-payment backend (RSA2-signed JSON)",
    response_model=NotificationAccepted,
    responses={code: {"model": ErrorResponse} for code in (400, 401, 413, 429)},
)
async def backend_notification(request: Request) -> Response:
    if (refused := _limited(request)) is not None:
        return refused
    # The hot path (every payment): no dependencies to solve and the answer serialized once,
    # here; measured in BENCHMARKS.md (issue 9).
    bridge = services_of(request.app).get(PaymentBridge)
    try:
        recorded = await bridge.accept_backend(await request.body(), request.headers)
    except NotificationRejected as exc:
        raise ApiError(exc.status, exc.code, exc.reason, _MESSAGES_ZH.get(exc.code, "通知被拒绝")) from exc
    answer = NotificationAccepted(
        payment_id=recorded.payment_id, duplicate=not recorded.is_new, devices=len(recorded.device_ids)
    )
    return Response(answer.model_dump_json(), media_type="application/json")


async def _platform_door(
    request: Request, door: Door, answered: Response, refused: Callable[[NotificationRejected], Response]
) -> Response:
    """A payment platform's notification through `door`: `answered` once it is recorded, else
    what `refused` makes of the refusal, in the platform's own terms."""
    if (limited := _limited(request)) is not None:
        return limited
    bridge = services_of(request.app).get(PaymentBridge)
    try:
        await bridge.accept(door, await request.body(), request.headers)
    except NotificationRejected as exc:
        return refused(exc)
    return answered


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
    # Alipay reads only the body: anything but "success" makes it try again later.
    fail = lambda exc: PlainTextResponse(ANSWER_FAILURE, status_code=exc.status)  # noqa: E731
    return await _platform_door(request, "alipay", PlainTextResponse(ANSWER_SUCCESS), fail)


@router.post(
    "/notifications/unionpay",
    summary="UnionPay (ACP 5.1.0) back notification (form, RSA with the certificate it carries); 200 once recorded",
    response_class=PlainTextResponse,
    responses=_TEXT_ANSWERS,
)
async def unionpay_notification(request: Request) -> Response:
    # UnionPay retries anything but 200; the body says why, for whoever reads its console.
    fail = lambda exc: PlainTextResponse(f"{exc.code}: {exc.reason}", status_code=exc.status)  # noqa: E731
    return await _platform_door(request, "unionpay", PlainTextResponse("ok"), fail)


class WechatPayError(BaseModel):
    code: str
    message: str


@router.post(
    "/notifications/wechatpay",
    summary="WeChat Pay API v3 notification (signed, AES-256-GCM); 204 once recorded",
    status_code=204,
    responses={code: {"model": WechatPayError} for code in (400, 401, 413, 429, 503)},
)
async def wechatpay_notification(request: Request) -> Response:
    def fail(exc: NotificationRejected) -> Response:
        # WeChat Pay's own error shape, so its console shows why.
        return JSONResponse(WechatPayError(code="FAIL", message=f"{exc.code}: {exc.reason}").model_dump(), exc.status)

    return await _platform_door(request, "wechatpay", Response(status_code=204), fail)


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
