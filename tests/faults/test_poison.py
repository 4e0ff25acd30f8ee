"""The poison cases of the fault suite (issue 22): on each stream a device sends a burst of
messages that are valid JSON and are refused further down (NUL in a value, NUL in a key, a
number out of PostgreSQL's range, a timestamp PostgreSQL refuses, a 1 MiB string), while
genuine payments and health flow from the other devices, and the consumer of that stream is
killed -9 and restarted in the middle of the burst.

Each case proves: every genuine payment is played once and recorded played (`Rig.check`),
every genuine message on the stream is stored as sent, each poison message is in quarantine
exactly once (with the consumer and the reason), and none was handed over more than a few times.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiomqtt
import psycopg
import pytest

from firmware_protocols import topics
from tests.faults.rig import DIRECT, PROXIED, Rig

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

POISON_DEVICE, GENUINE_DEVICE = "FLT-POISON", "FLT-GENUINE"
POISON: dict[str, dict[str, Any]] = {
    "nul_value": {"note": "a\u0000b"},
    "nul_key": {"extra": {"k\u0000": 1}},
    "out_of_range": {"count": 2**70},
    "bad_timestamp": {"ts": 10**16},  # the year 318,857: past what timestamptz holds
    "huge_string": {"blob": "x" * 2**20},
}
ROUNDS = 8


@dataclass(frozen=True)
class Stream:
    kind: topics.Up
    fields: dict[str, Any]
    consumer: str  # as the quarantine names it
    process: str  # the rig's process that consumes it


STREAMS = {
    "hello": Stream(
        topics.Up.HELLO,
        {"type": "hello", "model": "HD-S1", "serial": "S1", "firmware": "9.9.9", "boot_id": "b"},
        "ingest",
        "fleet",
    ),
    "health": Stream(
        topics.Up.HEALTH,
        {"type": "health", "uptime_s": 1, "volume": 5, "queue_depth": 0, "played_total": 0},
        "ingest",
        "fleet",
    ),
    "event": Stream(topics.Up.EVENT, {"type": "event", "kind": "note", "detail": {"n": 1}}, "ingest", "fleet"),
    "presence": Stream(
        topics.Up.PRESENCE, {"type": "presence", "online": True, "reason": "connected"}, "ingest", "fleet"
    ),
    "ack": Stream(
        topics.Up.ACK, {"type": "ack", "payment_id": "P-NONE", "status": "played", "received_at": 1}, "bridge", "bridge"
    ),
    "result": Stream(
        topics.Up.RESULT,
        {"type": "result", "command_id": "c-none", "name": "diagnose", "status": "succeeded"},
        "remote",
        "fleet",
    ),
    "ota": Stream(
        topics.Up.OTA,
        {"type": "ota_status", "campaign_id": "k-none", "version": "1.1.0", "state": "queued", "running": "1.0.0"},
        "ota",
        "fleet",
    ),
}


async def _burst(rig: Rig, stream: Stream) -> int:
    """ROUNDS rounds of every poison (and, on the ingest's streams, one genuine message of
    another device each round); returns how many genuine messages were sent."""
    genuine = 0
    async with aiomqtt.Client("127.0.0.1", rig.broker.port, identifier="poisoner") as client:
        for round_ in range(ROUNDS):
            now = int(time.time() * 1000)
            for name, poison in POISON.items():
                bad = {"v": 1, "device_id": POISON_DEVICE, "ts": now, **stream.fields, "seq": f"{round_}-{name}"}
                payload = json.dumps({**bad, **poison}).encode()
                await client.publish(topics.up(POISON_DEVICE, stream.kind), payload, qos=1)
            if stream.consumer == "ingest":
                good = {"v": 1, "device_id": GENUINE_DEVICE, "ts": now, **stream.fields, "seq": round_}
                await client.publish(topics.up(GENUINE_DEVICE, stream.kind), json.dumps(good).encode(), qos=1)
                genuine += 1
            await asyncio.sleep(0.5)
    return genuine


async def _rows(rig: Rig, query: str, *params: object) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(rig.pg.url) as conn:
        cur = await conn.execute(query, params)  # type: ignore[arg-type]
        return await cur.fetchall()


async def _genuine_stored(rig: Rig, stream: Stream, sent: int) -> bool:
    """The genuine messages of the ingest's streams, stored as sent."""
    if stream.kind is topics.Up.HEALTH:
        return (await _rows(rig, "SELECT count(*) FROM device_health WHERE device_id = %s", GENUINE_DEVICE)) == [
            (sent,)
        ]
    if stream.kind is topics.Up.EVENT:
        query = "SELECT count(*) FROM device_events WHERE device_id = %s AND kind = 'note'"
        return (await _rows(rig, query, GENUINE_DEVICE)) == [(sent,)]
    if stream.kind is topics.Up.HELLO:
        return (await _rows(rig, "SELECT firmware FROM devices WHERE device_id = %s", GENUINE_DEVICE)) == [("9.9.9",)]
    query = "SELECT online, presence_reason FROM devices WHERE device_id = %s"
    return (await _rows(rig, query, GENUINE_DEVICE)) == [(True, "connected")]


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_a_poison_burst_with_its_consumer_restarted_stops_nothing(rig: Rig, name: str) -> None:
    stream = STREAMS[name]
    payments = asyncio.create_task(rig.pay(15))
    burst = asyncio.create_task(_burst(rig, stream))
    await asyncio.sleep(1.5)  # some of the burst is taken, the rest is to come
    rig.kill(stream.process)
    await asyncio.sleep(1.5)  # what is sent now waits in the consumer's persistent session
    rig.start_server(stream.process)
    await rig.wait_http(rig.fleet_port if stream.process == "fleet" else rig.bridge_port)
    sent = await burst
    await payments
    await rig.check((DIRECT, PROXIED))

    expected = ROUNDS * len(POISON)
    held_query = "SELECT consumer, reason, copies FROM quarantine WHERE device_id = %s"

    async def all_held() -> bool:
        return len(await _rows(rig, held_query, POISON_DEVICE)) >= expected

    await rig.until(all_held, f"{expected} poison messages quarantined")
    if stream.consumer == "ingest":
        await rig.until(lambda: _genuine_stored(rig, stream, sent), "every genuine message stored")
    await asyncio.sleep(1.0)  # time for a copy too many to show up
    held = await _rows(rig, held_query, POISON_DEVICE)
    assert len(held) == expected, "each poison message is held exactly once"
    assert {(consumer, reason) for consumer, reason, _ in held} == {(stream.consumer, "payload")}
    # Handed over at most twice: once, and once more if the kill fell between holding it and
    # acknowledging it to the broker. Never retried on and on.
    assert max(copies for *_, copies in held) <= 2
