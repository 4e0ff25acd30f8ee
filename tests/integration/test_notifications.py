"""Task notifications against receivers that check what the real platforms check: a local HTTP
server plays a 企业微信 group robot (its `key`), a 钉钉 custom robot (its 加签 signature, computed
here from 钉钉's documented recipe, not with our code) and a generic webhook (our HMAC header).
The outbox is in the machine's PostgreSQL; time is passed to the notifier's rounds, so "down for
a minute" is a minute of the notifier's time without a minute of waiting (issue 26)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fleet_server.contacts.cipher import FieldCipher, FieldKeys
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.devices.importer import import_registry
from fleet_server.errors import NotifyError, TaskError
from fleet_server.inspection.detectors import Finding, FindingKind
from fleet_server.inspection.rules import CancelReason
from fleet_server.inspection.tasks import TaskBook
from fleet_server.notify.channels import Channels, NewChannel
from fleet_server.notify.formats import ChannelKind
from fleet_server.notify.sender import Notifier
from haodian.settings import Settings
from tests.integration.conftest import api_client, eventually, in_process_stack
from tests.integration.test_fleet_server import HEADER, T0, row

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

# Test material: the receivers here accept these and nothing else.
WECOM_KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
DING_TOKEN = "c0ffee"  # noqa: S105 - test material
DING_SECRET = "SECb6b1ee3b5e0b4c1b"  # noqa: S105 - test material
HOOK_SECRET = "hook-secret-for-tests"  # noqa: S105 - test material
WRONG_SECRET = "SECwrongwrongwrong"  # noqa: S105 - test material
BASE = "https://fleet.example.cn"


@dataclass
class Received:
    kind: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """The three receivers on one port; `received` holds what each accepted."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refused: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/cgi-bin/webhook/send", self.wecom, methods=["POST"]),
                Route("/robot/send", self.dingtalk, methods=["POST"]),
                Route("/hooks/{who}", self.webhook, methods=["POST"]),
            ]
        )

    async def wecom(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if request.query_params.get("key") != WECOM_KEY:
            self.refused.append("wecom key")
            return JSONResponse({"errcode": 93000, "errmsg": "invalid webhook url"})
        assert body["msgtype"] == "markdown"
        assert isinstance(body["markdown"]["content"], str)
        self.received.append(Received("wecom", body))
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    async def dingtalk(self, request: Request) -> Response:
        q = request.query_params
        stamp = q.get("timestamp", "")
        # 钉钉's recipe: base64(HmacSHA256(secret, timestamp + "\n" + secret)), then URL-encoded.
        mac = hmac.new(DING_SECRET.encode(), f"{stamp}\n{DING_SECRET}".encode(), hashlib.sha256).digest()
        expected = base64.b64encode(mac).decode()
        body = json.loads(await request.body())
        if q.get("access_token") != DING_TOKEN or q.get("sign") != expected:
            self.refused.append("dingtalk sign")
            return JSONResponse({"errcode": 310000, "errmsg": "sign not match"})
        assert body["msgtype"] == "markdown"
        assert set(body["markdown"]) == {"title", "text"}
        assert "atMobiles" in body["at"]
        self.received.append(Received("dingtalk", body))
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    async def webhook(self, request: Request) -> Response:
        raw = await request.body()
        stamp = request.headers.get("x-haodian-timestamp", "")
        want = "sha256=" + hmac.new(HOOK_SECRET.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("x-haodian-signature", ""), want):
            self.refused.append("webhook signature")
            return Response(status_code=401)
        headers = {"delivery": request.headers["x-haodian-delivery"], "who": request.path_params["who"]}
        self.received.append(Received("webhook", json.loads(raw), headers))
        return Response(status_code=204)

    def of(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.kind == kind]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(receiver: Receiver, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(receiver.app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def world(machine_database) -> AsyncIterator[dict[str, Any]]:
    async with open_pool(machine_database) as pool:
        await migrate(pool)
        rows = row("D1", "SN1") + row("D2", "SN2") + row("D3", "SN3")
        rows += row(
            "D4", "SN4", merchant="M4", store_id="S2", store_name="酒仙桥店", agent_id="A2", agent_name="李经纪"
        )
        await import_registry(pool, HEADER + rows, dry_run=False)
        cipher = FieldCipher(FieldKeys.generate())
        yield {"pool": pool, "channels": Channels(pool, cipher), "tasks": TaskBook(pool), "cipher": cipher}


@asynccontextmanager
async def notifier_of(world: dict[str, Any]) -> AsyncIterator[Notifier]:
    """A notifier whose rounds the test drives with its own clock (its loop is not started)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield Notifier(world["pool"], world["cipher"], base_url=BASE, client=client)


def _finding(device: str, kind: FindingKind = FindingKind.FAULTY) -> Finding:
    return Finding(device, kind, 0.9, {"why": "test"}, "检查喇叭并更换", "Check the speaker and replace it")


async def test_a_new_task_reaches_each_kind_of_channel_once_in_its_format(world):
    port = free_port()
    channels: Channels = world["channels"]
    base = f"http://127.0.0.1:{port}"
    await channels.add(
        NewChannel(name="运营群", kind=ChannelKind.WECOM, url=f"{base}/cgi-bin/webhook/send?key={WECOM_KEY}"), by="t"
    )
    await channels.add(
        NewChannel(
            name="望京店群",
            kind=ChannelKind.DINGTALK,
            url=f"{base}/robot/send?access_token={DING_TOKEN}",
            secret=DING_SECRET,
            store_id="S1",
        ),
        by="t",
    )
    await channels.add(
        NewChannel(name="王经纪", kind=ChannelKind.WEBHOOK, url=f"{base}/hooks/a1", secret=HOOK_SECRET, agent_id="A1"),
        by="t",
    )
    await channels.add(  # the other store's: not told of this store's task
        NewChannel(
            name="酒仙桥店", kind=ChannelKind.WEBHOOK, url=f"{base}/hooks/s2", secret=HOOK_SECRET, store_id="S2"
        ),
        by="t",
    )
    await world["tasks"].record([_finding("D1")], T0)
    await world["tasks"].record([_finding("D1")], T0 + timedelta(minutes=1))  # merged: no news
    receiver = Receiver()
    async with serving(receiver, port), notifier_of(world) as notifier:
        sent = await notifier.run_once(T0 + timedelta(minutes=1))
        again = await notifier.run_once(T0 + timedelta(minutes=10))
    assert (sent.sent, sent.failed, again.sent) == (3, 0, 0)
    assert receiver.refused == []
    assert sorted(r.kind for r in receiver.received) == ["dingtalk", "webhook", "wecom"]
    [task] = await world["tasks"].find(device_id="D1")
    for text in (
        receiver.of("wecom")[0].body["markdown"]["content"],
        receiver.of("dingtalk")[0].body["markdown"]["text"],
    ):
        for said in ("设备故障", "D1（SN1）", "面馆", "望京店"):
            assert said in text
        assert "检查喇叭并更换" in text
        assert f"({BASE}/agent#task={task.task_id})" in text
    [hook] = receiver.of("webhook")
    assert hook.headers["who"] == "a1"
    assert hook.body["event"] == "task.opened"
    assert hook.body["notice"]["task_id"] == task.task_id
    assert hook.body["notice"]["action_en"] == "Check the speaker and replace it"


async def test_a_receiver_down_for_a_minute_gets_every_notification_once_when_it_returns(world):
    port = free_port()
    await world["channels"].add(
        NewChannel(name="hook", kind=ChannelKind.WEBHOOK, url=f"http://127.0.0.1:{port}/hooks/ops", secret=HOOK_SECRET),
        by="t",
    )
    await world["tasks"].record([_finding("D1"), _finding("D2"), _finding("D3", FindingKind.LOST)], T0)
    receiver = Receiver()
    async with notifier_of(world) as notifier:
        failed = 0
        for second in range(0, 60):  # a round a second, nobody listening
            failed += (await notifier.run_once(T0 + timedelta(seconds=second))).failed
        assert failed >= 3 * 4  # tried again and again, with backoff: 0, 2, 6, 14, 30 s ...
        async with serving(receiver, port):
            sent = 0
            for second in range(60, 240):
                sent += (await notifier.run_once(T0 + timedelta(seconds=second))).sent
    assert sent == 3
    deliveries = [r.headers["delivery"] for r in receiver.received]
    assert len(deliveries) == len(set(deliveries)) == 3
    assert sorted(r.body["notice"]["device_id"] for r in receiver.received) == ["D1", "D2", "D3"]
    [listed] = await world["channels"].list()
    assert (listed.pending, listed.given_up, listed.last_error) == (0, 0, None)


async def test_a_wrong_signature_is_kept_with_the_platforms_answer_and_retried(world):
    port = free_port()
    url = f"http://127.0.0.1:{port}/robot/send?access_token={DING_TOKEN}"
    await world["channels"].add(
        NewChannel(name="ding", kind=ChannelKind.DINGTALK, url=url, secret=WRONG_SECRET), by="t"
    )
    await world["tasks"].record([_finding("D1")], T0)
    receiver = Receiver()
    async with serving(receiver, port), notifier_of(world) as notifier:
        report = await notifier.run_once(T0)
    assert (report.sent, report.failed, receiver.refused) == (0, 1, ["dingtalk sign"])
    [listed] = await world["channels"].list()
    assert (listed.pending, listed.last_error) == (1, "errcode 310000: sign not match")
    assert WRONG_SECRET not in listed.model_dump_json()
    assert DING_TOKEN not in listed.shown


async def test_a_reassigned_task_reaches_the_new_agent_and_a_robot_gets_at_most_its_minute(world):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    await world["channels"].add(
        NewChannel(name="李经纪", kind=ChannelKind.WEBHOOK, url=f"{base}/hooks/a2", secret=HOOK_SECRET, agent_id="A2"),
        by="t",
    )
    await world["channels"].add(
        NewChannel(
            name="运营群", kind=ChannelKind.WECOM, url=f"{base}/cgi-bin/webhook/send?key={WECOM_KEY}", per_minute=2
        ),
        by="t",
    )
    tasks: TaskBook = world["tasks"]
    await tasks.record([_finding("D1"), _finding("D2"), _finding("D3")], T0)
    [task] = await tasks.find(device_id="D1")
    await tasks.assign(task.task_id, "A2", T0 + timedelta(seconds=1))
    await tasks.assign(task.task_id, "A2", T0 + timedelta(seconds=2))  # again: no news
    receiver = Receiver()
    async with serving(receiver, port), notifier_of(world) as notifier:
        first = await notifier.run_once(T0 + timedelta(seconds=3))
        later = await notifier.run_once(T0 + timedelta(seconds=70))
    assert (first.sent, first.deferred) == (3, 1)  # the agent's one, and two of the robot's three
    assert later.sent == 1
    [assigned] = receiver.of("webhook")
    assert assigned.body["event"] == "task.assigned"
    assert assigned.body["notice"]["task_id"] == task.task_id
    assert "工单已指派给您" in assigned.body["text"]
    assert len(receiver.of("wecom")) == 3


async def test_channels_refuse_a_bad_scope_and_a_webhook_without_a_secret(world):
    channels: Channels = world["channels"]
    with pytest.raises(NotifyError, match="needs a secret"):
        await channels.add(NewChannel(name="x", kind=ChannelKind.WEBHOOK, url="https://h.example/x"), by="t")
    with pytest.raises(NotifyError, match="no such store"):
        await channels.add(
            NewChannel(name="x", kind=ChannelKind.WECOM, url="https://h.example/x", store_id="S9"), by="t"
        )
    with pytest.raises(NotifyError, match="not both"):
        await channels.add(
            NewChannel(name="x", kind=ChannelKind.WECOM, url="https://h.example/x", store_id="S1", agent_id="A1"),
            by="t",
        )
    with pytest.raises(ValidationError, match="not a URL"):
        NewChannel(name="x", kind=ChannelKind.WECOM, url="http://[")  # found by the OpenAPI fuzzing
    with pytest.raises(ValidationError, match="names no host"):
        NewChannel(name="x", kind=ChannelKind.WECOM, url="https://:80/x")
    channel_id = await channels.add(
        NewChannel(name="x", kind=ChannelKind.WECOM, url="https://user:pw@qyapi.example/cgi-bin/webhook/send?key=K"),
        by="t",
    )
    [listed] = await channels.list()
    assert listed.shown == "https://qyapi.example/cgi-bin/webhook/send"
    await channels.delete(channel_id)
    with pytest.raises(NotifyError, match="not found"):
        await channels.delete(channel_id)


async def test_the_running_server_sends_a_channels_test_message(tmp_path, machine_database, server_keys, unique):
    port = free_port()
    settings = Settings(
        data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"t{unique}", notify_poll_s=0.2, public_base_url=BASE
    )
    receiver = Receiver()
    async with (
        serving(receiver, port),
        in_process_stack(settings, machine_database, server_keys) as (_, server),
        await api_client(server) as http,
    ):
        body = {
            "name": "ops",
            "kind": "webhook",
            "url": f"http://127.0.0.1:{port}/hooks/ops",
            "secret": HOOK_SECRET,
        }
        made = (await http.post("/api/v1/notify/channels", json=body)).json()
        assert made["shown"] == f"http://127.0.0.1:{port}/hooks/ops"
        assert (await http.post(f"/api/v1/notify/channels/{made['channel_id']}/test")).status_code == 202

        async def told() -> bool:  # received, and marked sent
            [listed] = (await http.get("/api/v1/notify/channels")).json()
            return listed["last_sent_at"] is not None and listed["pending"] == 0

        await eventually(told, what="the test message at the webhook, marked sent")
    assert [r.body["event"] for r in receiver.received] == ["test"]


async def test_a_task_past_its_due_time_is_escalated_and_notified_once(world):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    for name, scope in (("ops", {}), ("s1", {"store_id": "S1"})):
        channel = NewChannel(
            name=name, kind=ChannelKind.WEBHOOK, url=f"{base}/hooks/{name}", secret=HOOK_SECRET, **scope
        )
        await world["channels"].add(channel, by="t")
    tasks: TaskBook = world["tasks"]
    await tasks.record([_finding("D1")], T0)
    [task] = await tasks.find(device_id="D1")
    assert task.due_at == T0 + timedelta(hours=4)  # a faulty speaker's SLA
    assert await tasks.escalate(T0 + timedelta(hours=3, minutes=59)) == []
    assert await tasks.escalate(T0 + timedelta(hours=4)) == [task.task_id]
    assert await tasks.escalate(T0 + timedelta(hours=5)) == []  # once
    receiver = Receiver()
    async with serving(receiver, port), notifier_of(world) as notifier:
        first = await notifier.run_once(T0 + timedelta(hours=5))
        again = await notifier.run_once(T0 + timedelta(hours=6))
    assert (first.sent, again.sent) == (4, 0)
    events = sorted((r.headers["who"], r.body["event"]) for r in receiver.received)
    assert events == [
        ("ops", "task.escalated"),
        ("ops", "task.opened"),
        ("s1", "task.escalated"),
        ("s1", "task.opened"),
    ]
    escalated = next(r for r in receiver.received if r.body["event"] == "task.escalated")
    assert "工单超时升级" in escalated.body["text"]
    assert (await tasks.get(task.task_id)).escalated_at == T0 + timedelta(hours=4)


async def test_a_false_alarm_closes_the_task_and_holds_the_same_finding_back(world):
    tasks: TaskBook = world["tasks"]
    await tasks.record([_finding("D1"), _finding("D2")], T0)
    one, two = sorted(await tasks.find(status=None), key=lambda t: t.device_id)[:2]
    cancelled = await tasks.cancel(
        one.task_id,
        CancelReason.FALSE_ALARM,
        "商户说一直正常",
        by="agent1",
        now=T0 + timedelta(minutes=10),
        hold_days=7,
    )
    assert (cancelled.status, cancelled.cancel_reason, cancelled.cancelled_by) == ("closed", "false_alarm", "agent1")
    assert cancelled.closed_at == T0 + timedelta(minutes=10)
    await tasks.cancel(two.task_id, CancelReason.DUPLICATE, "", by="ops", now=T0 + timedelta(minutes=10), hold_days=7)
    with pytest.raises(TaskError, match="closed"):
        await tasks.cancel(two.task_id, CancelReason.OTHER, "", by="ops", now=T0 + timedelta(minutes=11), hold_days=7)
    # The same finding an hour later: D1's is held back (false alarm), D2's opens a new task.
    assert await tasks.record([_finding("D1"), _finding("D2")], T0 + timedelta(hours=1)) == (1, 0)
    # Another kind of finding of D1 is not held back; the faulty one is again after the hold.
    assert await tasks.record([_finding("D1", FindingKind.DEGRADED)], T0 + timedelta(hours=1)) == (1, 0)
    assert await tasks.record([_finding("D1")], T0 + timedelta(days=7, minutes=11)) == (1, 0)
