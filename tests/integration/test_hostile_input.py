"""Hostile input at every entry point of the running system, in-process on the embedded broker
and PostgreSQL: malformed and oversized MQTT payloads on every device topic (to the servers) and
every downlink topic (to a real agent), forged and replayed payment notifications, and floods
of sign-ins and notifications. Each case gets a clear logged error and changes nothing: after
all of it, a genuine payment is still announced exactly once and genuine health is stored.
"""

from __future__ import annotations

import json

import aiomqtt
import psycopg
import pytest
from structlog.testing import capture_logs

from edge_agent.hardware.audio import MemorySink
from firmware_protocols import topics
from firmware_protocols.messages import Channel
from haodian.settings import Settings
from payment_bridge.notifications import SIGNATURE_HEADER
from simulators.backend import PaymentBackend
from simulators.registry import register
from tests.integration.conftest import agent_for, announced, api_client, eventually, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

GARBAGE: dict[str, bytes] = {
    "empty": b"",
    "not json": b"{definitely not json",
    "invalid utf-8": b"\xff\xfe\xfa{}",
    "nul bytes": b'{"v":1,\x00"type":"x"}',
    "json array": b"[1, 2, 3]",
    "json string": b'"hello"',
    "json null": b"null",
    "nested past the stack": b"[" * 8000 + b"]" * 8000,
    "oversized (1 MB)": b'{"pad":"' + b"x" * 1_000_000 + b'"}',
    "wrong types": json.dumps({"v": "one", "type": 5, "device_id": ["x"], "ts": "now"}).encode(),
    "huge numbers": json.dumps(
        {"v": 1, "type": "health", "device_id": "X", "ts": 10**40, "uptime_s": -(10**30)}
    ).encode(),
    "wrong schema version": json.dumps({"v": 99, "type": "hello", "device_id": "X", "ts": 1}).encode(),
    "another device's id": json.dumps(
        {"v": 1, "type": "health", "device_id": "SOMEONE-ELSE", "ts": 1, "uptime_s": 1, "volume": 1,
         "queue_depth": 0, "played_total": 0}
    ).encode(),
    "unsigned announce": json.dumps(
        {"v": 1, "type": "announce", "device_id": "X", "ts": 1, "payment_id": "FAKE", "amount_fen": 100000,
         "channel": "wechat", "paid_at": 1, "issued_at": 1, "ttl_s": 60}
    ).encode(),
}  # fmt: skip
ODD_TOPICS = [
    "hd/v1/{d}/up",
    "hd/v1/{d}/up/unknown",
    "hd/v1/{d}/up/health/extra",
    "hd/v2/{d}/up/health",
    "hd/v1//up/ack",
]


@pytest.fixture
async def stack(tmp_path, embedded_database, server_keys, unique):
    settings = Settings(
        data_dir=tmp_path,
        http_port=0,
        mqtt_client_prefix=f"t{unique}",
        ack_timeout_s=1.0,
        login_attempts_per_min=5,
        notifications_per_s=20,
    )
    async with in_process_stack(settings, embedded_database, server_keys) as (broker, server):
        yield broker, server, embedded_database


async def test_garbage_on_every_topic_changes_nothing_and_everything_keeps_working(
    stack, unique, server_keys, tmp_path, backend_key
):
    broker, server, database = stack
    device, victim = f"HO{unique}", f"HV{unique}"
    sink = MemorySink()
    cases = 0
    async with (
        agent_for(victim, broker, server_keys, tmp_path, sink) as _agent,
        aiomqtt.Client(broker.host, broker.port, identifier=f"raw{unique}", username="raw") as raw,
        await api_client(server) as http,
    ):
        await eventually(lambda: _online(http, victim), what="the agent online")
        await register(server.pool, devices=[victim], merchants=[f"M{unique}"])
        assert (await http.post("/api/v1/bindings", json={"device_id": victim, "merchant_id": f"M{unique}"})).is_success
        with capture_logs() as logs:
            for kind in topics.Up:
                for payload in GARBAGE.values():
                    await raw.publish(topics.up(device, kind), payload, qos=1)
                    cases += 1
            for kind in topics.Down:
                for payload in GARBAGE.values():
                    await raw.publish(topics.down(victim, kind), payload, qos=1)
                    cases += 1
            for pattern in ODD_TOPICS:
                for payload in GARBAGE.values():
                    await raw.publish(pattern.format(d=device), payload, qos=1)
                    cases += 1
            # After all of it: a genuine payment is announced once, genuine health is stored.
            backend = PaymentBackend(backend_key, server.base_url, [f"M{unique}"])
            body, headers = backend.notification(amount_fen=1250, channel=Channel.WECHAT)
            accepted = await http.post("/api/v1/notifications/backend", content=body, headers=headers)
            assert accepted.status_code == 200, accepted.text
            payment_id = accepted.json()["payment_id"]
            await eventually(lambda: _played(http, payment_id), what="the genuine payment played")
    assert cases == (len(topics.Up) + len(topics.Down) + len(ODD_TOPICS)) * len(GARBAGE)
    assert [r.name for r in announced(sink)] == [payment_id]
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(*) FROM device_health WHERE device_id = %s", (device,))
        assert (await cur.fetchone())[0] == 0, "no garbage stored as health"
        cur = await conn.execute("SELECT count(*) FROM device_health WHERE device_id = %s", (victim,))
        assert (await cur.fetchone())[0] > 0, "genuine health stored"
    refused = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert len(refused) >= len(topics.Up) * (len(GARBAGE) - 1), "each bad uplink is logged"
    assert not [e for e in logs if e["log_level"] == "critical"]


async def _online(http, device: str) -> bool:
    answer = await http.get(f"/api/v1/devices/{device}")
    return answer.status_code == 200 and bool(answer.json()["online"])


async def _played(http, payment_id: str) -> bool:
    answer = await http.get(f"/api/v1/payments/{payment_id}")
    return answer.status_code == 200 and [d["status"] for d in answer.json()["deliveries"]] == ["played"]


async def test_forged_and_replayed_notifications_are_refused_or_recognised(stack, unique, backend_key):
    """Forgeries get 401/400 and record nothing; a replay (the same signed notification again,
    as a platform's retry or an attacker's capture) is a recorded duplicate, announced once."""
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    _, server, database = stack
    merchant = f"M{unique}"
    backend = PaymentBackend(backend_key, server.base_url, [merchant])
    impostor = PaymentBackend(
        rsa.generate_private_key(public_exponent=65537, key_size=2048), server.base_url, [merchant]
    )
    body, headers = backend.notification(amount_fen=1250, channel=Channel.WECHAT)
    forged_body, forged_headers = impostor.notification(amount_fen=99_900, channel=Channel.ALIPAY)
    tampered = body.replace(b"1250", b"9250") if b"1250" in body else body + b" "
    cases = {
        "signed by another key": (forged_body, forged_headers, 401),
        "amount changed after signing": (tampered, headers, 401),
        "no signature": (body, {k: v for k, v in headers.items() if "sign" not in k.lower()}, 401),
        "garbage signature": (body, {**headers, SIGNATURE_HEADER: "AAAA"}, 401),
        "not json, signed": (b"{", headers, 401),
        "oversized": (b"x" * 2_000_000, headers, 413),
    }
    async with await api_client(server) as http:
        for name, (content, hdrs, status) in cases.items():
            answer = await http.post("/api/v1/notifications/backend", content=content, headers=hdrs)
            assert answer.status_code == status, (name, answer.text)
            assert answer.json()["error"]["message_zh"], name
        for channel in ("alipay", "wechatpay"):
            answer = await http.post(f"/api/v1/notifications/{channel}", content=forged_body, headers=forged_headers)
            assert answer.status_code in (400, 401, 503), channel
        first = await http.post("/api/v1/notifications/backend", content=body, headers=headers)
        replays = [await http.post("/api/v1/notifications/backend", content=body, headers=headers) for _ in range(5)]
    assert first.status_code == 200
    assert first.json()["duplicate"] is False
    assert all(r.status_code == 200 and r.json()["duplicate"] for r in replays)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(*) FROM payments WHERE merchant_id = %s", (merchant,))
        assert (await cur.fetchone())[0] == 1, "only the genuine payment is recorded, once"


async def test_sign_in_and_notification_floods_are_rate_limited(stack, unique, backend_key):
    _, server, _ = stack
    async with await api_client(server) as http:
        answers = [
            await http.post("/api/v1/auth/login", json={"login": f"nobody{unique}", "password": "wrong-password-1"})
            for _ in range(8)
        ]
        statuses = [a.status_code for a in answers]
        assert statuses[:5] == [401] * 5
        assert set(statuses[5:]) == {429}
        assert int(answers[-1].headers["retry-after"]) >= 1
        backend = PaymentBackend(backend_key, server.base_url, [f"M{unique}"])
        flood = []
        for _ in range(40):
            body, headers = backend.notification(amount_fen=100, channel=Channel.WECHAT)
            flood.append((await http.post("/api/v1/notifications/backend", content=body, headers=headers)).status_code)
    assert 429 in flood
    assert flood.count(200) >= 20
