"""Scaling out on the machine's Mosquitto and PostgreSQL: two ingest processes, and two bridges,
split their stream with a shared subscription, and every message is handled exactly once."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import Ack, AckStatus, AnnounceKind, Channel, Health
from firmware_protocols.signing import Signer
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.devices.bindings import Bindings
from fleet_server.ingest.consumer import Ingest
from mqtt_link.link import probe
from payment_bridge.bridge import PaymentBridge
from payment_bridge.notifications import PaymentNotice
from payment_bridge.store import PaymentStore
from simulators.registry import register
from tests.integration.conftest import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

MESSAGES = 200


@pytest.fixture
async def pool(machine_database):
    async with open_pool(machine_database, max_size=4) as pool:
        await migrate(pool)
        yield pool


@pytest.fixture
async def endpoint(machine_mosquitto):
    return BrokerEndpoint(host=machine_mosquitto[0], port=machine_mosquitto[1])


async def test_two_ingests_in_a_share_group_store_each_message_once(pool, endpoint, unique):
    ids = [f"ingest-{unique}-{n}" for n in range(2)]
    try:
        async with AsyncExitStack() as exits:
            ingests = [
                await exits.enter_async_context(
                    Ingest(pool, endpoint, client_id=client_id, batch_size=20, flush_s=0.05, share_group=f"t{unique}")
                )
                for client_id in ids
            ]
            for ingest in ingests:
                await ingest.wait_connected(10)
            async with aiomqtt.Client(endpoint.host, endpoint.port, identifier=f"pub-{unique}") as client:
                for n in range(MESSAGES):
                    device = f"X{unique}{n % 20:03d}"
                    report = Health(
                        device_id=device, ts=1_790_000_000_000 + n, uptime_s=n, volume=5, queue_depth=0, played_total=n
                    )
                    await client.publish(topics.up(device, topics.Up.HEALTH), report.model_dump_json(), qos=1)

            async def all_stored() -> bool:
                async with pool.connection() as conn:
                    cur = await conn.execute(
                        "SELECT count(*) FROM device_health WHERE device_id LIKE %s", (f"X{unique}%",)
                    )
                    return (await cur.fetchone()) == (MESSAGES,)

            await eventually(all_stored, timeout_s=30, what="every report stored")
            await asyncio.sleep(0.5)  # a duplicate would arrive now
            assert await all_stored()
            # Each took a share of ours. (Their counters also include retained presence of other
            # tests' devices, which Mosquitto hands to a new subscription, so no exact split.)
            assert all(ingest.stats.written > MESSAGES / 4 for ingest in ingests), [i.stats for i in ingests]
    finally:
        for client_id in ids:
            await probe(endpoint, client_id=client_id)


async def test_two_bridges_in_a_share_group_record_each_ack_once(pool, endpoint, server_keys, unique):
    store = PaymentStore(pool)
    device, merchant = f"Y{unique}", f"M{unique}"
    await register(pool, devices=[device], merchants=[merchant])
    await Bindings(pool).bind(device, merchant, ttl=timedelta(seconds=60))
    now = datetime.now(tz=UTC)
    payments = [f"scale-{unique}-{n}" for n in range(40)]
    for payment_id in payments:
        notice = PaymentNotice(
            payment_id, payment_id, merchant, 100, Channel.WECHAT, "SUCCESS", AnnounceKind.PAYMENT, now, "{}"
        )
        await store.record_payment(notice, source="backend", received_at=now, ttl=timedelta(minutes=5))
    ids = [f"bridge-{unique}-{n}" for n in range(2)]
    try:
        async with AsyncExitStack() as exits:
            bridges = [
                await exits.enter_async_context(
                    PaymentBridge(
                        store,
                        endpoint,
                        Signer(server_keys.signing_key),
                        server_keys.backend_public_key,
                        client_id=client_id,
                        ack_timeout_s=600,  # no republishing during the test
                        share_group=f"t{unique}",
                    )
                )
                for client_id in ids
            ]
            for bridge in bridges:
                await bridge.wait_connected(10)
            async with aiomqtt.Client(endpoint.host, endpoint.port, identifier=f"dev-{unique}") as client:
                for payment_id in payments:
                    ack = Ack(
                        device_id=device,
                        ts=int(now.timestamp() * 1000),
                        payment_id=payment_id,
                        status=AckStatus.PLAYED,
                        received_at=int(now.timestamp() * 1000),
                        play_started_at=int(now.timestamp() * 1000) + 5,
                    )
                    await client.publish(topics.up(device, topics.Up.ACK), ack.model_dump_json(), qos=1)

            async def all_played() -> bool:
                async with pool.connection() as conn:
                    cur = await conn.execute(
                        "SELECT count(*) FROM deliveries WHERE device_id = %s AND status = 'played' AND acks = 1",
                        (device,),
                    )
                    return (await cur.fetchone()) == (len(payments),)

            await eventually(all_played, timeout_s=30, what="every ack recorded once")
            await asyncio.sleep(0.5)
            assert await all_played()
            assert all(bridge.stats.acks > 0 for bridge in bridges), [b.stats for b in bridges]
            assert sum(bridge.stats.acks for bridge in bridges) == len(payments)
    finally:
        for client_id in ids:
            await probe(endpoint, client_id=client_id)
