"""The bridge's delivery guarantees on the embedded stack with real agents: a platform's retry
after we crashed between recording and answering, a device offline past the TTL, and the
payments nobody heard told back to the backend over a real HTTP webhook."""

from __future__ import annotations

import asyncio
import base64
import json
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from edge_agent.hardware.audio import MemorySink
from fleet_server.db.pool import open_pool
from haodian.settings import Settings
from payment_bridge.notifications import verify_backend_notification
from payment_bridge.store import PaymentStore
from payment_bridge.webhook import SIGNATURE_HEADER
from simulators.backend import PaymentBackend
from simulators.registry import register
from tests.integration.conftest import agent_for, announced, api_client, eventually, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@dataclass
class Receiver:
    """The backend's webhook endpoint: a real HTTP server on a local port, answering the first
    `refuse` requests with 503."""

    refuse: int = 0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((headers, body))
        status = 503 if len(self.requests) <= self.refuse else 200
        self.statuses.append(status)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()


@pytest.fixture
async def receiver():
    found = Receiver(refuse=1)
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hooks/haodian"
    async with server:
        yield found


@pytest.fixture
async def stack(tmp_path, embedded_database, server_keys, receiver, unique):
    settings = Settings(
        data_dir=tmp_path,
        http_port=0,
        mqtt_client_prefix=f"d{unique}",
        ack_timeout_s=1.0,
        announce_ttl_s=5,
        backend_webhook_url=receiver.url,
    )
    async with in_process_stack(settings, embedded_database, server_keys) as (broker, server):
        yield broker, server, embedded_database


async def test_platform_retry_after_a_crash_between_record_and_answer_announces_once(
    stack, server_keys, backend_key, tmp_path, unique
):
    broker, server, database_url = stack
    device, merchant = f"C{unique}", f"M{unique}"
    sink = MemorySink()
    backend = PaymentBackend(backend_key, server.base_url, [merchant])
    body, headers = backend.notification(amount_fen=880)
    async with AsyncExitStack() as exits:
        agent = await exits.enter_async_context(agent_for(device, broker, server_keys, tmp_path, sink))
        await agent.wait_connected(10)
        http = await exits.enter_async_context(await api_client(server))
        await register(server.pool, devices=[device], merchants=[merchant])
        assert (await http.post("/api/v1/bindings", json={"device_id": device, "merchant_id": merchant})).is_success
        # The bridge that took this notification committed it and died before answering: the
        # payment and its delivery are in the database, nothing was published, nobody answered.
        notice = verify_backend_notification(body, headers["X-Haodian-Signature"], "RSA2", backend_key.public_key())
        async with open_pool(database_url, max_size=1) as pool:
            recorded = await PaymentStore(pool).record_payment(
                notice, source="backend", received_at=datetime.now(tz=UTC), ttl=timedelta(seconds=5)
            )
        assert recorded.device_ids == [device]
        # The backend hears nothing and sends the notification again.
        again = await http.post("/api/v1/notifications/backend", content=body, headers=headers)
        assert again.json()["duplicate"] is True

        async def played() -> bool:
            payment = (await http.get(f"/api/v1/payments/{notice.payment_id}")).json()
            return payment["deliveries"][0]["status"] == "played"

        await eventually(played, what="the recorded payment to be announced by the retry loop")
        await asyncio.sleep(1.5)  # time for a wrong second announce to show up
    assert len(announced(sink)) == 1
    assert announced(sink)[0].text.endswith("八点八元")


async def test_device_offline_past_the_ttl_plays_nothing_late_and_the_backend_is_told(
    stack, server_keys, backend_key, receiver, tmp_path, unique
):
    broker, server, database_url = stack
    device, merchant, lonely = f"O{unique}", f"M{unique}", f"L{unique}"
    sink = MemorySink()
    backend = PaymentBackend(backend_key, server.base_url, [merchant])
    async with await api_client(server) as http:
        # The device connects once (so the broker keeps its session), then goes away.
        async with agent_for(device, broker, server_keys, tmp_path, sink) as agent:
            await agent.wait_connected(10)
        await register(server.pool, devices=[device], merchants=[merchant])
        assert (await http.post("/api/v1/bindings", json={"device_id": device, "merchant_id": merchant})).is_success
        body, headers = backend.notification(amount_fen=4200)
        payment_id = json.loads(body)["payment_id"]
        assert (await http.post("/api/v1/notifications/backend", content=body, headers=headers)).is_success
        # A merchant with no speaker at all: not announced from the start.
        lonely_body, lonely_headers = backend.notification(merchant_id=lonely, amount_fen=100)
        lonely_id = json.loads(lonely_body)["payment_id"]
        assert (
            await http.post("/api/v1/notifications/backend", content=lonely_body, headers=lonely_headers)
        ).is_success

        async def both_listed() -> bool:
            listed = (await http.get("/api/v1/payments/not-announced")).json()
            return {p["payment_id"]: p["reason"] for p in listed} == {
                payment_id: "missed",
                lonely_id: "no_bound_device",
            }

        await eventually(both_listed, timeout_s=30, what="the missed and the unrouted payment to be listed")
        # The device comes back after the TTL: the broker hands it the queued announce, which it
        # refuses to play late.
        async with agent_for(device, broker, server_keys, tmp_path, sink) as agent:
            await agent.wait_connected(10)

            async def expired() -> bool:
                payment = (await http.get(f"/api/v1/payments/{payment_id}")).json()
                return payment["deliveries"][0]["status"] == "expired"

            await eventually(expired, what="the late announce to be acked expired")

        async def both_told() -> bool:
            return receiver.statuses.count(200) == 2

        await eventually(both_told, timeout_s=30, what="the backend to take both webhooks")
    assert sink.played == []
    # The first webhook was refused (503) and sent again; each event reached the backend once.
    assert receiver.statuses[0] == 503
    delivered = [json.loads(b) for (_, b), s in zip(receiver.requests, receiver.statuses, strict=True) if s == 200]
    assert sorted(e["payment_id"] for e in delivered) == sorted([payment_id, lonely_id])
    assert {e["event"] for e in delivered} == {"payment.not_announced"}
    headers, body = receiver.requests[-1]
    server_keys.signing_key.public_key().verify(base64.b64decode(headers[SIGNATURE_HEADER.lower()]), body)

    async def both_marked() -> bool:
        # The sender marks an event delivered after the backend's 200: a moment after it.
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cur = await conn.execute("SELECT count(*) FROM payment_events WHERE delivered_at IS NOT NULL")
            return await cur.fetchone() == (2,)

    await eventually(both_marked, timeout_s=10, what="both events marked delivered")
