"""The notification doors' answers, and the lean way in that serves them without the web framework.

Every payment comes through one of four POST routes. `answer` is the whole of what happens at
one: the sender's rate limit, the bridge's `accept` (verify, record durably, announce), and the
answer in the sender's own terms. The FastAPI routes (`routes`, which document them in the
OpenAPI spec) call it, and so does `NotificationDoors`, an ASGI wrapper in front of the app that
takes these four paths straight from the server (`haodian server` runs the app inside it): no
routing through every route, no middleware, no dependency solving, no request object. The
framework's share of a notification was ~29 % of the bridge's CPU (py-spy, BENCHMARKS.md).
Anything else, and any path here when the process runs no bridge, goes to the app as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import structlog
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.responses import Response

from fleet_server.http.errors import error_response
from fleet_server.http.ratelimit import too_many
from fleet_server.http.services import HttpPolicy, Services
from payment_bridge.alipay import ANSWER_FAILURE, ANSWER_SUCCESS
from payment_bridge.bridge import PaymentBridge
from payment_bridge.doors import Door
from payment_bridge.errors import NotificationRejected
from payment_bridge.notifications import MAX_BODY_BYTES
from payment_bridge.store import Recorded

log = structlog.get_logger(__name__)

PREFIX = "/api/v1/notifications/"
# The path of each door, under PREFIX.
PATHS: dict[str, Door] = {f"{PREFIX}{door}": door for door in ("backend", "alipay", "wechatpay", "unionpay")}

MESSAGES_ZH = {
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


class NotificationAccepted(BaseModel):
    code: str = "SUCCESS"
    payment_id: str
    duplicate: bool
    devices: int


class WechatPayError(BaseModel):
    code: str
    message: str


def _backend_accepted(recorded: Recorded) -> Response:
    answer = NotificationAccepted(
        payment_id=recorded.payment_id, duplicate=not recorded.is_new, devices=len(recorded.device_ids)
    )
    return Response(answer.model_dump_json(), media_type="application/json")


def _backend_refused(exc: NotificationRejected) -> Response:
    return error_response(exc.status, exc.code, exc.reason, MESSAGES_ZH.get(exc.code, "通知被拒绝"))


def _wechatpay_refused(exc: NotificationRejected) -> Response:
    # WeChat Pay's own error shape, so its console shows why.
    return JSONResponse(WechatPayError(code="FAIL", message=f"{exc.code}: {exc.reason}").model_dump(), exc.status)


# Each door's answer once recorded, and to a refusal. Alipay reads only the body: anything but
# "success" makes it try again later. UnionPay retries anything but 200; the body says why, for
# whoever reads its console. WeChat Pay wants 204, or its error shape.
_ANSWERS: dict[Door, tuple[Callable[[Recorded], Response], Callable[[NotificationRejected], Response]]] = {
    "backend": (_backend_accepted, _backend_refused),
    "alipay": (
        lambda _: PlainTextResponse(ANSWER_SUCCESS),
        lambda exc: PlainTextResponse(ANSWER_FAILURE, status_code=exc.status),
    ),
    "unionpay": (
        lambda _: PlainTextResponse("ok"),
        lambda exc: PlainTextResponse(f"{exc.code}: {exc.reason}", status_code=exc.status),
    ),
    "wechatpay": (lambda _: Response(status_code=204), _wechatpay_refused),
}


async def answer(
    bridge: PaymentBridge, policy: HttpPolicy | None, door: Door, body: bytes, headers: Mapping[str, str], client: str
) -> Response:
    """What `door` answers `client` for a notification (`headers` with lower-case names)."""
    limited = too_many(policy.notify_limiter if policy else None, client, "notifications", "通知")
    if limited is not None:
        return limited
    accepted, refused = _ANSWERS[door]
    try:
        recorded = await bridge.accept(door, body, headers)
    except NotificationRejected as exc:
        return refused(exc)
    return accepted(recorded)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def read_body(receive: Receive) -> bytes:
    """The request's body; past MAX_BODY_BYTES the rest is not kept (the door refuses it as too large)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
            size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (ASGI gives them lower-cased); the first of a repeated one."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


class NotificationDoors:
    """ASGI: the four notification routes served by `answer` straight away; the rest by `app`."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self._services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door = PATHS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        bridge = self._services.find(PaymentBridge) if door is not None else None
        if door is None or bridge is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        body = await read_body(receive)
        try:
            response = await answer(
                bridge, self._services.find(HttpPolicy), door, body, _headers(scope), client[0] if client else "-"
            )
        except Exception:
            log.exception("notification not answered", door=door)
            response = PlainTextResponse("Internal Server Error", status_code=500)
        await response(scope, receive, send)
