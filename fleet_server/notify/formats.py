"""What a task notification says, and the request each kind of channel takes. Pure.

Three kinds, each in its documented format (../shared/reference/platforms.md):

- **wecom**, a 企业微信 group robot: POST the robot's URL (`…/cgi-bin/webhook/send?key=KEY`) with
  `{"msgtype": "markdown", "markdown": {"content": …}}`; it answers `{"errcode": 0, "errmsg": "ok"}`.
- **dingtalk**, a 钉钉 custom robot with 加签: POST `…/robot/send?access_token=T&timestamp=MS&sign=S`
  where S = URL-encoded base64(HMAC-SHA256(key=secret, msg="{MS}\\n{secret}")), with
  `{"msgtype": "markdown", "markdown": {"title", "text"}, "at": {"atMobiles": [...]}}`; the same answer.
- **webhook**, ours, for any receiver: POST a JSON body (the notice, its id and event) with
  `X-Haodian-Delivery: <id>` (the same on every retry, so a receiver can drop a repeat),
  `X-Haodian-Timestamp: <unix s>` and `X-Haodian-Signature: sha256=<hex HMAC-SHA256(secret,
  "{timestamp}.{body}")>`; any 2xx is accepted.

The platforms answer HTTP 200 with a non-zero `errcode` for a refusal (a wrong key, a bad
signature, too many messages): `refusal()` reads that too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import quote_plus

from pydantic import BaseModel


class ChannelKind(StrEnum):
    WECOM = "wecom"
    DINGTALK = "dingtalk"
    WEBHOOK = "webhook"


# The robots' own limit: 20 messages a minute each.
ROBOT_PER_MINUTE: Final = 20
SIGNATURE_HEADER: Final = "X-Haodian-Signature"
TIMESTAMP_HEADER: Final = "X-Haodian-Timestamp"
DELIVERY_HEADER: Final = "X-Haodian-Delivery"


class Notice(BaseModel):
    """One message about a task, fixed when it is queued: who and what, and where to act."""

    event: str  # task.opened, task.assigned, task.escalated, test
    title_zh: str
    title_en: str
    device_id: str | None = None
    serial: str | None = None
    merchant: str | None = None
    store: str | None = None
    problem_zh: str | None = None  # what is wrong
    action_zh: str | None = None  # what to do
    action_en: str | None = None
    task_id: int | None = None
    path: str | None = None  # the task's page, relative to the server's public address


@dataclass(frozen=True, slots=True)
class Request:
    url: str
    headers: dict[str, str]
    body: bytes


def markdown(notice: Notice, base_url: str) -> str:
    """The message in Chinese first, as the robots show it."""
    lines = [f"**【好店】{notice.title_zh}**"]
    if notice.device_id:
        serial = f"（{notice.serial}）" if notice.serial else ""
        lines.append(f"> 设备：{notice.device_id}{serial}")
    if notice.merchant:
        lines.append(f"> 商户：{notice.merchant}")
    if notice.store:
        lines.append(f"> 门店：{notice.store}")
    if notice.problem_zh:
        lines.append(f"> 问题：{notice.problem_zh}")
    if notice.action_zh:
        lines.append(f"> 处理：{notice.action_zh}")
    if notice.path:
        lines.append(f"[查看工单 Open the task]({base_url.rstrip('/')}{notice.path})")
    lines.append(notice.title_en)
    return "\n".join(lines)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """钉钉's 加签: URL-encoded base64 of HMAC-SHA256(secret, "{timestamp}\\n{secret}")."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(mac).decode())


def webhook_signature(secret: str, timestamp_s: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def request(
    kind: ChannelKind, url: str, secret: str | None, notice: Notice, *, base_url: str, now_ms: int, delivery: str
) -> Request:
    """The HTTP request that says `notice` on a channel of `kind` at `url`."""
    text = markdown(notice, base_url)
    json_header = {"Content-Type": "application/json; charset=utf-8"}
    if kind is ChannelKind.WECOM:
        return Request(url, json_header, _json({"msgtype": "markdown", "markdown": {"content": text}}))
    if kind is ChannelKind.DINGTALK:
        signed = url
        if secret:
            joiner = "&" if "?" in url else "?"
            signed = f"{url}{joiner}timestamp={now_ms}&sign={dingtalk_sign(secret, now_ms)}"
        body = {"msgtype": "markdown", "markdown": {"title": notice.title_zh, "text": text}, "at": {"atMobiles": []}}
        return Request(signed, json_header, _json(body))
    body_bytes = _json({"id": delivery, "event": notice.event, "notice": notice.model_dump(), "text": text})
    headers = {**json_header, DELIVERY_HEADER: delivery}
    if secret:
        timestamp_s = now_ms // 1000
        headers[TIMESTAMP_HEADER] = str(timestamp_s)
        headers[SIGNATURE_HEADER] = webhook_signature(secret, timestamp_s, body_bytes)
    return Request(url, headers, body_bytes)


def refusal(kind: ChannelKind, status: int, body: bytes) -> str | None:
    """Why the receiver did not take the message, or None if it did."""
    if not 200 <= status < 300:
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"
    if kind is ChannelKind.WEBHOOK:
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return f"not a JSON answer: {body[:200].decode(errors='replace')}"
    code = answer.get("errcode") if isinstance(answer, dict) else None
    if code == 0:
        return None
    message = answer.get("errmsg") if isinstance(answer, dict) else None
    return f"errcode {code}: {message}"
