"""Poison messages and forged reports against the real thing: the fleet server and bridge in
this process on the machine's Mosquitto as it is configured by default (no access control at
all: anyone who reaches it may publish anything on any topic) and the machine's PostgreSQL
(issue 22)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import psycopg
import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from edge_agent.hardware.audio import MemorySink
from edge_agent.hardware.modem import SimulatedModem
from edge_agent.voice import ClipSpeaker, VoicePack
from firmware_protocols import topics
from firmware_protocols.credentials import encode_secret
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import Ack, AckStatus, Health, Presence
from firmware_protocols.reports import report_key, sign_report
from fleet_server.db.isolate import write_apart
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.ingest.batch import Received, write_batch
from fleet_server.inspection.detectors import FindingKind, inspect
from haodian.server import Part, ServerStack
from haodian.settings import Settings
from simulators.backend import PaymentBackend
from simulators.registry import register
from tests.integration.conftest import announced, api_client, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def stack(tmp_path, machine_mosquitto, machine_database, server_keys, unique) -> AsyncIterator[ServerStack]:
    host, port = machine_mosquitto
    settings = Settings(
        data_dir=tmp_path,
        http_port=0,
        mqtt_client_prefix=f"t{unique}",
        ack_timeout_s=1.0,
        ingest_ack_after_commit=True,
    )
    async with ServerStack(
        settings,
        parts={Part.FLEET, Part.BRIDGE},
        endpoint=BrokerEndpoint(host, port),
        database_url=machine_database,
        keys=server_keys,
    ) as server:
        yield server


@asynccontextmanager
async def signing_agent(
    server: ServerStack, device: str, tmp_path, sink: MemorySink
) -> AsyncIterator[tuple[EdgeAgent, bytes]]:
    """A real agent on the machine's Mosquitto holding the secret the fleet issued it; yields
    the agent and its secret."""
    assert server.credentials is not None
    issued = await server.credentials.provision(device, by="test")
    host, port = server.endpoint.host, server.endpoint.port
    config = AgentConfig(
        device_id=device,
        broker_url=f"mqtt://{host}:{port}",
        state_dir=tmp_path / device,
        server_keys=[server.keys.server_public_key_b64],
        health_interval_s=0.5,
        device_secret=encode_secret(issued.secret),
    )
    async with EdgeAgent(config, speaker=ClipSpeaker(VoicePack.builtin(), sink), modem=SimulatedModem(seed=1)) as agent:
        await agent.wait_connected(10)
        yield agent, issued.secret


async def quarantined(database_url: str, device: str) -> list[tuple[str, str, str, int]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT consumer, reason, error, copies FROM quarantine WHERE device_id = %s ORDER BY id", (device,)
        )
        return await cur.fetchall()


async def delivery(database_url: str, payment_id: str, device: str) -> tuple[str, bool | None]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT status, ack_signed FROM deliveries WHERE payment_id = %s AND device_id = %s", (payment_id, device)
        )
        row = await cur.fetchone()
        assert row is not None
        return row[0], row[1]


async def test_forged_wrongly_signed_and_replayed_acks_mark_nothing_played(
    stack, machine_database, backend_key, tmp_path, unique
) -> None:
    server, device, merchant = stack, f"SGN{unique}", f"M{unique}"
    backend = PaymentBackend(backend_key, server.base_url, [merchant])
    ack_topic = topics.up(device, topics.Up.ACK)
    host, port = server.endpoint.host, server.endpoint.port
    async with AsyncExitStack() as exits:
        http = await exits.enter_async_context(await api_client(server))
        spy = await exits.enter_async_context(aiomqtt.Client(host, port, identifier=f"spy{unique}"))
        await spy.subscribe(ack_topic, qos=1)
        sink = MemorySink()
        async with signing_agent(server, device, tmp_path, sink):
            await register(server.pool, devices=[device], merchants=[merchant])
            assert (await http.post("/api/v1/bindings", json={"device_id": device, "merchant_id": merchant})).is_success
            body, headers = backend.notification(amount_fen=1250)
            first = json.loads(body)["payment_id"]
            assert (await http.post("/api/v1/notifications/backend", content=body, headers=headers)).is_success
            genuine = await asyncio.wait_for(anext(aiter(spy.messages)), 20)
            assert isinstance(genuine.payload, bytes)

            async def first_played() -> bool:
                return (await delivery(machine_database, first, device))[0] == "played"

            await eventually(first_played, what="the genuine payment played")
        assert await delivery(machine_database, first, device) == ("played", True)

        # The speaker is off now: its next payment stays unplayed, whatever the broker carries.
        body, headers = backend.notification(amount_fen=990)
        second = json.loads(body)["payment_id"]
        assert (await http.post("/api/v1/notifications/backend", content=body, headers=headers)).is_success
        now = int(datetime.now(tz=UTC).timestamp() * 1000)
        unsigned = Ack(device_id=device, ts=now, payment_id=second, status=AckStatus.PLAYED, received_at=now)
        wrong_key = sign_report(report_key(os.urandom(32)), unsigned)
        replayed = json.loads(genuine.payload)
        replayed["payment_id"] = second  # the genuine ack of the first payment, made to speak for the second
        forger = await exits.enter_async_context(aiomqtt.Client(host, port, identifier=f"forger{unique}"))
        for payload in (unsigned.to_json(), wrong_key.to_json(), json.dumps(replayed).encode(), genuine.payload):
            await forger.publish(ack_topic, payload, qos=1)

        async def three_held() -> bool:
            return len(await quarantined(machine_database, device)) >= 3

        await eventually(three_held, what="the three forged acks quarantined")
        await asyncio.sleep(1.0)  # time for a wrong change to land
        held = await quarantined(machine_database, device)
        assert [(consumer, reason) for consumer, reason, _, _ in held] == [("bridge", "signature")] * 3
        assert "unsigned" in held[0][2]
        assert all("does not verify" in error for _, _, error, _ in held[1:])
        assert (await delivery(machine_database, second, device))[0] == "pending"
        assert await delivery(machine_database, first, device) == (
            "played",
            True,
        )  # the verbatim replay changes nothing
        assert len(announced(sink)) == 1


async def test_a_forged_retained_offline_presence_does_not_take_a_connected_device_offline(
    stack, machine_database, tmp_path, unique
) -> None:
    server, device = stack, f"PRS{unique}"
    presence_topic = topics.up(device, topics.Up.PRESENCE)
    host, port = server.endpoint.host, server.endpoint.port
    async with AsyncExitStack() as exits:
        http = await exits.enter_async_context(await api_client(server))
        forger = await exits.enter_async_context(aiomqtt.Client(host, port, identifier=f"forger{unique}"))
        exits.push_async_callback(forger.publish, presence_topic, b"", qos=1, retain=True)  # leave no retained copy

        async def online() -> bool:
            answer = await http.get(f"/api/v1/devices/{device}")
            return answer.status_code == 200 and bool(answer.json()["online"])

        async with signing_agent(server, device, tmp_path, MemorySink()) as (_, secret):
            await eventually(online, what="the device online")
            now = int(datetime.now(tz=UTC).timestamp() * 1000)
            forged = Presence(device_id=device, ts=now, online=False, reason="lost")
            await forger.publish(presence_topic, forged.to_json(), qos=1, retain=True)
            # A will of an earlier connection, truly signed by the device, replayed now.
            key = report_key(secret)
            old_will = sign_report(key, forged.model_copy(update={"session": "an-old-session"}))
            await forger.publish(presence_topic, old_will.to_json(), qos=1, retain=True)

            async def both_held() -> bool:
                return len(await quarantined(machine_database, device)) >= 2

            await eventually(both_held, what="the forged and the replayed presence quarantined")
            await asyncio.sleep(1.0)
            assert await online()
            held = await quarantined(machine_database, device)
            assert [(consumer, reason) for consumer, reason, _, _ in held] == [
                ("ingest", "signature"),
                ("ingest", "session"),
            ]

        async def offline() -> bool:
            return not await online()

        # The device's own goodbye, signed for its session, does take it offline.
        await eventually(offline, what="the device's own goodbye to count")


POISON: dict[str, dict[str, Any]] = {
    "nul_value": {"note": "a\u0000b"},
    "nul_key": {"extra": {"k\u0000": 1}},
    "out_of_range": {"count": 2**70},
    "bad_timestamp": {"ts": 10**16},  # the year 318,857: past what PostgreSQL's timestamptz holds
    "huge_string": {"blob": "x" * 2**20},
}
GOOD: dict[topics.Up, dict[str, Any]] = {
    topics.Up.HELLO: {"type": "hello", "model": "HD-S1", "serial": "S1", "firmware": "1.0.0", "boot_id": "b1"},
    topics.Up.HEALTH: {"type": "health", "uptime_s": 1, "volume": 5, "queue_depth": 0, "played_total": 0},
    topics.Up.EVENT: {"type": "event", "kind": "fault", "detail": {"part": "printer"}},
    topics.Up.PRESENCE: {"type": "presence", "online": True, "reason": "connected"},
}


async def test_poison_on_every_ingest_stream_is_quarantined_once_and_the_rest_is_stored(
    stack, machine_database, unique
) -> None:
    server, good_device, bad_device = stack, f"GUD{unique}", f"BAD{unique}"
    host, port = server.endpoint.host, server.endpoint.port
    sent_health = 0
    async with aiomqtt.Client(host, port, identifier=f"raw{unique}") as raw:
        # The poisoning device is a registered one: it once said a proper hello.
        hello = {"v": 1, "device_id": bad_device, "ts": 1, **GOOD[topics.Up.HELLO]}
        await raw.publish(topics.up(bad_device, topics.Up.HELLO), json.dumps(hello).encode(), qos=1)
        for round_ in range(3):
            for kind, fields in GOOD.items():
                now = int(datetime.now(tz=UTC).timestamp() * 1000)
                good = {"v": 1, "device_id": good_device, "ts": now, **fields}
                await raw.publish(topics.up(good_device, kind), json.dumps(good).encode(), qos=1)
                sent_health += kind is topics.Up.HEALTH
                for name, poison in POISON.items():
                    bad = {"v": 1, "device_id": bad_device, "ts": now, **fields, "seq": f"{round_}-{name}", **poison}
                    payload = json.dumps(bad).encode()
                    await raw.publish(topics.up(bad_device, kind), payload, qos=1)
                    if round_ == 0 and name == "nul_value":
                        await raw.publish(topics.up(bad_device, kind), payload, qos=1)  # the broker sends it again

        async def all_held() -> bool:
            return len(await quarantined(machine_database, bad_device)) >= 3 * len(GOOD) * len(POISON)

        await eventually(all_held, what="every poison message quarantined")

        async def health_stored() -> bool:
            async with await psycopg.AsyncConnection.connect(machine_database) as conn:
                cur = await conn.execute("SELECT count(*) FROM device_health WHERE device_id = %s", (good_device,))
                row = await cur.fetchone()
                return row is not None and row[0] == sent_health

        await eventually(health_stored, what="every genuine health report stored")
    await asyncio.sleep(0.5)
    held = await quarantined(machine_database, bad_device)
    assert len(held) == 3 * len(GOOD) * len(POISON), "each poison message held exactly once"
    assert {(consumer, reason) for consumer, reason, _, _ in held} == {("ingest", "payload")}
    assert sorted(copies for *_, copies in held)[-len(GOOD) :] == [2] * len(GOOD)
    # A device that keeps sending poison is an inspection finding (through the inspector's SQL).
    assert server.inspector is not None
    facts = {f.device_id: f for f in await server.inspector.facts(datetime.now(tz=UTC))}
    assert facts[bad_device].quarantined == len(held)
    findings = inspect(facts[bad_device], server.inspector.thresholds, datetime.now(tz=UTC))
    assert [f.kind for f in findings] == [FindingKind.FAULTY]
    assert f"{len(held)} messages quarantined" in findings[0].evidence["reasons"]
    async with http_of(server) as http:
        assert (await http.get(f"/api/v1/devices/{good_device}")).json()["firmware"] == "1.0.0"
        summary = (await http.get("/api/v1/quarantine/summary")).json()
        assert summary["total"] >= len(held)
        metrics = (await http.get("/metrics")).text
        assert 'haodian_quarantined_messages{consumer="ingest",reason="payload"}' in metrics
        listed = (await http.get("/api/v1/quarantine", params={"device_id": bad_device, "limit": 500})).json()
        assert len(listed) == len(held)
        purged = await http.delete("/api/v1/quarantine", params={"device_id": bad_device})
        assert purged.json() == {"purged": len(held)}
    assert await quarantined(machine_database, bad_device) == []


@asynccontextmanager
async def http_of(server: ServerStack) -> AsyncIterator[Any]:
    async with await api_client(server) as http:
        yield http


async def test_a_batch_the_database_refuses_is_written_apart_and_only_the_bad_message_is_left(
    machine_database, unique
) -> None:
    """Past the boundary (a model built without validation, as a future field might slip
    through): PostgreSQL refuses the batch (22003: out of range for integer), the good
    messages commit, the bad one comes back with PostgreSQL's reason."""
    at = datetime.now(tz=UTC)
    batch = [
        Received(at, Health(device_id=f"W{unique}{i}", ts=1, uptime_s=1, volume=1, queue_depth=0, played_total=0))
        for i in range(9)
    ]
    bad = Health.model_construct(
        device_id=f"W{unique}X", ts=1, uptime_s=1, volume=1, queue_depth=2**40, played_total=0, type="health", v=1
    )
    batch.insert(4, Received(at, bad))
    async with open_pool(machine_database, max_size=2) as pool:
        await migrate(pool)
        poisoned = await write_apart(batch, lambda part: write_batch(pool, list(part)))
        assert [item.message.device_id for item, _ in poisoned] == [f"W{unique}X"]
        assert getattr(poisoned[0][1], "sqlstate", None) == "22003"
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM device_health WHERE device_id LIKE %s", (f"W{unique}%",))
            assert await cur.fetchone() == (9,)


async def test_the_report_authority_through_first_signature_and_rotation(machine_database, unique) -> None:
    """Against the credentials in PostgreSQL: a device without credentials is believed unsigned;
    once it has signed, unsigned or wrongly signed reports from it are refused (no downgrade);
    after a rotation its new secret verifies at once and the old one does not."""
    from firmware_protocols.errors import SignatureError  # noqa: PLC0415
    from fleet_server.identity.reports import ReportAuthority  # noqa: PLC0415
    from fleet_server.identity.store import DeviceCredentials  # noqa: PLC0415

    device = f"RA{unique}"
    now = int(datetime.now(tz=UTC).timestamp() * 1000)
    ack = Ack(device_id=device, ts=now, payment_id="P1", status=AckStatus.PLAYED, received_at=now)
    async with open_pool(machine_database, max_size=2) as pool:
        await migrate(pool)
        credentials = DeviceCredentials(pool, os.urandom(32))
        authority = ReportAuthority(pool, credentials)
        assert await authority.verify(ack) is False  # no credentials: believed, counted unsigned
        first = await credentials.provision(device, by="test")
        authority = ReportAuthority(pool, credentials)  # a fresh process
        assert await authority.verify(ack) is False  # credentials, never signed: still believed
        signed = sign_report(report_key(first.secret), ack)
        assert await authority.verify(signed) is True
        with pytest.raises(SignatureError, match="unsigned"):
            await authority.verify(ack)
        other_process = ReportAuthority(pool, credentials)  # the mark is in the database
        with pytest.raises(SignatureError, match="unsigned"):
            await other_process.verify(ack)
        with pytest.raises(SignatureError, match="does not verify"):
            await authority.verify(sign_report(report_key(os.urandom(32)), ack))
        rotated = await credentials.provision(device, by="test", rotate=True)
        await asyncio.sleep(1.1)  # past the once-a-second re-read after a failed signature
        assert await authority.verify(sign_report(report_key(rotated.secret), ack)) is True
        with pytest.raises(SignatureError):
            await authority.verify(signed)  # the old secret's signature
        assert authority.stats.signed == 2
        assert authority.stats.refused == 3
