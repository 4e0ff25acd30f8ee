"""Fleet server and bridge in-process on the embedded broker and database, with real agents."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import aiomqtt
import psycopg
import pytest
from structlog.testing import capture_logs

from edge_agent.hardware.audio import MemorySink
from firmware_protocols.messages import Channel
from haodian.settings import Settings
from simulators.backend import PaymentBackend
from simulators.registry import register
from tests.integration.conftest import agent_for, announced, api_client, eventually, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def stack(tmp_path, embedded_database, server_keys, unique):
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"t{unique}", ack_timeout_s=1.0)
    async with in_process_stack(settings, embedded_database, server_keys) as (broker, server):
        yield broker, server, embedded_database


async def test_malformed_device_messages_are_logged_dropped_and_ingest_goes_on(stack, unique):
    broker, server, _ = stack
    device = f"BAD{unique}"
    async with (
        aiomqtt.Client(broker.host, broker.port, identifier=f"raw{unique}", username="raw") as raw,
        await api_client(server) as http,
    ):
        with capture_logs() as logs:
            await raw.publish(f"hd/v1/{device}/up/health", b"{definitely not json", qos=1)
            await raw.publish(f"hd/v1/{device}/up/hello", json.dumps({"v": 1, "type": "hello"}).encode(), qos=1)
            await raw.publish(
                f"hd/v1/{device}/up/health",
                json.dumps(
                    {
                        "v": 1,
                        "type": "health",
                        "device_id": "SOMEONE-ELSE",
                        "ts": 1,
                        "uptime_s": 1,
                        "volume": 1,
                        "queue_depth": 0,
                        "played_total": 0,
                    }
                ).encode(),
                qos=1,
            )
            good = {
                "v": 1,
                "type": "hello",
                "device_id": device,
                "ts": 1,
                "model": "HD-S1",
                "serial": "S1",
                "firmware": "0.1.0",
                "boot_id": "b",
            }
            await raw.publish(f"hd/v1/{device}/up/hello", json.dumps(good).encode(), qos=1)

            async def registered() -> bool:
                return (await http.get(f"/api/v1/devices/{device}")).status_code == 200

            await eventually(registered, what="the good hello after three bad messages")
        dropped = [e for e in logs if e["event"] == "malformed message dropped" and e["consumer"] == "ingest"]
        assert [e["topic"] for e in dropped] == [
            f"hd/v1/{device}/up/health",
            f"hd/v1/{device}/up/hello",
            f"hd/v1/{device}/up/health",
        ]
        assert "does not match the topic" in dropped[2]["error"]
        assert server.ingest is not None
        assert server.ingest.stats.rejected == 3
        assert (await http.get(f"/api/v1/devices/{device}")).json()["firmware"] == "0.1.0"


async def test_bad_signature_gets_4xx_and_is_recorded_as_rejected(stack, backend_key):
    _, server, database_url = stack
    backend = PaymentBackend(backend_key, server.base_url, ["M1"])
    body, headers = backend.notification(amount_fen=100)
    headers["X-Haodian-Signature"] = backend.notification(amount_fen=200)[1]["X-Haodian-Signature"]
    async with await api_client(server) as http:
        response = await http.post("/api/v1/notifications/backend", content=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "SIGNATURE_INVALID"
        assert response.json()["error"]["message_zh"] == "签名验证失败"
        unsigned = await http.post("/api/v1/notifications/backend", content=body)
        assert unsigned.status_code == 401
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT code, body FROM rejected_notifications ORDER BY id").fetchall()
        payments = conn.execute("SELECT count(*) FROM payments").fetchone()
    assert [code for code, _ in rows] == ["SIGNATURE_INVALID", "SIGNATURE_MISSING"]
    assert rows[0][1] == body.decode()
    assert payments == (0,)


async def test_payment_is_announced_once_on_every_bound_device(stack, server_keys, backend_key, tmp_path, unique):
    broker, server, database_url = stack
    sinks = {f"A{unique}": MemorySink(), f"B{unique}": MemorySink(), f"C{unique}": MemorySink()}
    async with AsyncExitStack() as exits:
        agents = [
            await exits.enter_async_context(agent_for(device, broker, server_keys, tmp_path, sink))
            for device, sink in sinks.items()
        ]
        for agent in agents:
            await agent.wait_connected(10)
        http = await exits.enter_async_context(await api_client(server))
        merchant = f"M{unique}"
        for device in list(sinks)[:2]:  # the third speaker belongs to another merchant
            await register(server.pool, devices=[device], merchants=[merchant])
            assert (await http.post("/api/v1/bindings", json={"device_id": device, "merchant_id": merchant})).is_success
        backend = PaymentBackend(backend_key, server.base_url, [merchant])
        body, headers = backend.notification(amount_fen=1250, channel=Channel.WECHAT)
        payment_id = json.loads(body)["payment_id"]
        first = await http.post("/api/v1/notifications/backend", content=body, headers=headers)
        assert first.json() == {"code": "SUCCESS", "payment_id": payment_id, "duplicate": False, "devices": 2}

        async def both_played() -> bool:
            payment = (await http.get(f"/api/v1/payments/{payment_id}")).json()
            return [d["status"] for d in payment["deliveries"]] == ["played", "played"]

        await eventually(both_played, what="both speakers to play the payment")
        # The platform retries the same notification: recorded once, announced once.
        again = await http.post("/api/v1/notifications/backend", content=body, headers=headers)
        assert again.json()["duplicate"] is True

        async def healthy() -> bool:
            response = await http.get(f"/api/v1/devices/{agents[0].device_id}")
            if response.status_code == 404:  # not ingested yet
                return False
            device = response.json()
            return device["online"] and device["last_health"] is not None

        await eventually(healthy, what="health of the first device in the registry")

        summary = (await http.get("/api/v1/deliveries/summary")).json()
        assert (summary["payments"], summary["deliveries"], summary["delivered"]) == (1, 2, 2)
        assert summary["delivery_rate"] == 1.0
        assert summary["latency_ms"]["p50"] is not None
    assert [[r.text for r in announced(sink)] for sink in sinks.values()] == [["微信收款十二点五元"]] * 2 + [[]]
    with psycopg.connect(database_url) as conn:
        acks = conn.execute(
            "SELECT device_id, acks, attempts FROM deliveries JOIN payments USING (payment_id)"
            " WHERE kind = 'payment' ORDER BY device_id"
        ).fetchall()
    assert [(a, b) for _, a, b in acks] == [(1, 1), (1, 1)]


async def test_announce_waits_for_a_device_that_was_offline(stack, server_keys, backend_key, tmp_path, unique):
    """Persistent session: an announce sent while the device is away is played when it returns."""
    broker, server, _ = stack
    device = f"OFF{unique}"
    sink = MemorySink()
    async with agent_for(device, broker, server_keys, tmp_path, sink) as agent:
        await agent.wait_connected(10)
    async with await api_client(server) as http:
        await register(server.pool, devices=[device], merchants=[f"M{unique}"])
        await http.post("/api/v1/bindings", json={"device_id": device, "merchant_id": f"M{unique}"})
        backend = PaymentBackend(backend_key, server.base_url, [f"M{unique}"])
        body, headers = backend.notification(amount_fen=500, channel=Channel.ALIPAY)
        assert (await http.post("/api/v1/notifications/backend", content=body, headers=headers)).is_success
        async with agent_for(device, broker, server_keys, tmp_path, sink):

            async def played() -> bool:
                return len(announced(sink)) > 0

            await eventually(played, what="the offline device to play on its return")
    assert [r.text for r in announced(sink)] == ["支付宝到账五元"]


async def test_bad_requests_get_clear_errors_in_both_languages(stack):
    _, server, _ = stack
    async with await api_client(server) as http:
        missing = await http.get("/api/v1/devices/NOPE1")
        assert missing.status_code == 404
        assert missing.json()["error"] == {
            "code": "DEVICE_NOT_FOUND",
            "message": "device NOPE1 not found",
            "message_zh": "设备 NOPE1 不存在",
        }
        bad = await http.post("/api/v1/bindings", json={"device_id": "a/b", "merchant_id": "M1"})
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "INVALID_REQUEST"
        assert "device_id" in bad.json()["error"]["message"]
        assert (await http.get("/openapi.json")).json()["info"]["title"] == "Haodian fleet API"
        home = await http.get("/")
        assert (home.status_code, home.headers["location"]) == (307, "/login")
        page = await http.get("/login")
        assert page.headers["content-type"].startswith("text/html")
        assert "好店" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_unacked_announce_is_republished_within_its_ttl(stack, server_keys, backend_key, tmp_path, unique):
    """A device bound before it ever connected has no broker session to queue into: the first
    announce is lost at the broker, and the bridge's retry delivers it once the device appears."""
    broker, server, database_url = stack
    device = f"NEW{unique}"
    sink = MemorySink()
    async with await api_client(server) as http:
        await register(server.pool, devices=[device], merchants=[f"M{unique}"])
        await http.post("/api/v1/bindings", json={"device_id": device, "merchant_id": f"M{unique}"})
        backend = PaymentBackend(backend_key, server.base_url, [f"M{unique}"])
        body, headers = backend.notification(amount_fen=2000, channel=Channel.UNIONPAY)
        payment_id = json.loads(body)["payment_id"]
        assert (await http.post("/api/v1/notifications/backend", content=body, headers=headers)).is_success
        async with agent_for(device, broker, server_keys, tmp_path, sink):

            async def played() -> bool:
                payment = (await http.get(f"/api/v1/payments/{payment_id}")).json()
                return payment["deliveries"][0]["status"] == "played"

            await eventually(played, what="the republished announce to be played")
    assert [r.text for r in announced(sink)] == ["云闪付收款二十元"]
    with psycopg.connect(database_url) as conn:
        attempts = conn.execute("SELECT attempts FROM deliveries WHERE payment_id = %s", (payment_id,)).fetchone()
    assert attempts is not None
    assert attempts[0] >= 2
