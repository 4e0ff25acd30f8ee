"""Ingest on the machine's Mosquitto and PostgreSQL: nothing a device sent is lost when the
database goes away, or when the ingest dies before storing what it had received."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiomqtt
import psycopg
import pytest
from psycopg import sql

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import Health
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.ingest.consumer import Ingest
from mqtt_link.link import probe
from tests.integration.conftest import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

DEVICES = 20
REPORTS = 10


def _report(device_id: str, n: int) -> bytes:
    health = Health(
        device_id=device_id, ts=1_790_000_000_000 + n * 60_000, uptime_s=n * 60, volume=5, queue_depth=0, played_total=n
    )
    return health.model_dump_json().encode()


async def _publish_all(host: str, port: int, unique: str) -> set[tuple[str, int]]:
    sent = set()
    async with aiomqtt.Client(host, port, identifier=f"pub-{unique}") as client:
        for n in range(REPORTS):
            for i in range(DEVICES):
                device = f"I{unique}{i:03d}"
                await client.publish(topics.up(device, topics.Up.HEALTH), _report(device, n), qos=1)
                sent.add((device, 1_790_000_000_000 + n * 60_000))
    return sent


@asynccontextmanager
async def _database_away(admin_url: str, name: str) -> AsyncIterator[None]:
    """The database refuses every connection, and those open are cut, until the block ends."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        yield
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


async def _stored(pool, unique: str) -> set[tuple[str, int]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT device_id, (extract(epoch FROM ts) * 1000)::bigint FROM device_health WHERE device_id LIKE %s",
            (f"I{unique}%",),
        )
        return {(row[0], row[1]) for row in await cur.fetchall()}


async def _stored_when_complete(pool, unique: str, sent: set[tuple[str, int]], timeout_s: float = 60) -> set:
    """What this test's devices have in the database once it holds all `sent` (or at the timeout).

    The ingest's counters are no measure: on the machine's broker it also receives the retained
    presence of other tests' devices."""
    stored: set[tuple[str, int]] = set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while (stored := await _stored(pool, unique)) != sent:  # noqa: ASYNC110 - polls the database.
                await asyncio.sleep(0.2)
    return stored


@pytest.fixture
async def setup(machine_database, machine_mosquitto, unique):
    host, port = machine_mosquitto
    endpoint = BrokerEndpoint(host=host, port=port)
    client_id = f"test-ingest-{unique}"
    admin = machine_database.rsplit("/", 1)[0] + "/postgres"
    name = machine_database.rsplit("/", 1)[1]
    async with open_pool(machine_database, max_size=2) as pool:
        await migrate(pool)
        yield pool, endpoint, client_id, admin, name
    # The ingest's session is persistent by design; a clean connect with its id ends it, so the
    # machine's broker does not keep queueing for a test that is over.
    await probe(endpoint, client_id=client_id)


async def test_database_away_then_back_loses_nothing(setup, unique):
    pool, endpoint, client_id, admin, name = setup
    async with Ingest(pool, endpoint, client_id=client_id, batch_size=50, flush_s=0.05) as ingest:
        await ingest.wait_connected(10)
        async with _database_away(admin, name):
            sent = await _publish_all(endpoint.host, endpoint.port, unique)
            await eventually(_now(lambda: ingest.stats.write_failures >= 1), timeout_s=30, what="a failed write")
            assert ingest.stats.written == 0
        stored = await _stored_when_complete(pool, unique, sent)
    assert stored == sent
    assert ingest.stats.acks_void == 0


async def test_what_a_dead_ingest_had_not_stored_is_delivered_again(setup, unique):
    pool, endpoint, client_id, admin, name = setup
    async with _database_away(admin, name):
        # The first ingest receives everything but can store nothing, then stops: since it
        # acknowledged nothing, the broker keeps every message in its session.
        async with Ingest(pool, endpoint, client_id=client_id, batch_size=50, flush_s=0.05) as first:
            await first.wait_connected(10)
            sent = await _publish_all(endpoint.host, endpoint.port, unique)
            # (its count includes other tests' retained presence too)
            await eventually(
                _now(lambda: first.stats.received >= len(sent)), timeout_s=30, what="every report received"
            )
        assert first.stats.written == 0
    async with Ingest(pool, endpoint, client_id=client_id, batch_size=50, flush_s=0.05):
        assert await _stored_when_complete(pool, unique, sent) == sent


def _now(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A counter check as the awaitable `eventually` polls."""

    async def check() -> bool:
        return predicate()

    return check
