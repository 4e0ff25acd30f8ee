"""The telemetry storage in either mode, on whatever PostgreSQL the tests are pointed at
(HAODIAN_TEST_DATABASE_URL): device times no store should file a row under, the settings of
retention and compression, and what the ops page and `/metrics` say about the storage and,
with TimescaleDB, its background jobs (issue 31)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiomqtt
import psycopg
import pytest

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import Event, Health
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.ingest.batch import Received, implausible_time, write_batch
from fleet_server.ingest.storage import Job, StorageStatus, storage_metrics
from fleet_server.ingest.telemetry import StorageMode, TelemetryStore
from haodian.server import Part, ServerStack
from haodian.settings import Settings
from tests.integration.conftest import api_client, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
YEAR_5138_MS = 10**14 - 1  # the protocol's largest time
NEEDS_TIMESCALE = "needs TimescaleDB: point HAODIAN_TEST_DATABASE_URL at a server with it preloaded"
NATIVE_ONLY = "native partitions only: this database has TimescaleDB hypertables"


@pytest.fixture
async def store(machine_database) -> AsyncIterator[TelemetryStore]:
    async with open_pool(machine_database) as pool:
        await migrate(pool)
        telemetry = TelemetryStore(pool, retention_days=30, compress_after_days=5)
        await telemetry.detect()
        yield telemetry


def _health(device: str, ts_ms: int) -> Health:
    return Health(device_id=device, ts=ts_ms, uptime_s=1, volume=5, queue_depth=0, played_total=0)


def test_a_device_time_is_implausible_before_2023_or_more_than_a_day_ahead():
    ms = int(NOW.timestamp() * 1000)
    assert implausible_time(ms, NOW) is None
    assert implausible_time(ms - 60 * 86_400_000, NOW) is None  # an old report from the outbox
    assert implausible_time(ms + 86_400_000, NOW) is None
    assert implausible_time(ms + 86_400_001, NOW) == "clock_ahead"
    assert implausible_time(YEAR_5138_MS, NOW) == "clock_ahead"
    assert implausible_time(0, NOW) == "clock_unset"
    assert implausible_time(315_532_800_000, NOW) == "clock_unset"  # 1980-01-01, a modem's default
    assert implausible_time(1_672_531_200_000, NOW) is None  # 2023-01-01, the floor itself


async def test_rows_of_implausible_device_times_are_filed_at_receipt_keeping_the_device_time(store, machine_database):
    plausible = int((NOW - timedelta(minutes=10)).timestamp() * 1000)
    batch = [
        Received(NOW, _health("T1", YEAR_5138_MS)),
        Received(NOW, _health("T1", 0)),
        Received(NOW, _health("T1", plausible)),
        Received(NOW, Event(device_id="T1", ts=YEAR_5138_MS, kind="fault", detail={"part": "printer"})),
    ]
    await write_batch(store._pool, batch)
    await store.maintain(NOW)
    with psycopg.connect(machine_database) as conn:
        health = conn.execute("SELECT ts, (payload->>'ts')::bigint FROM device_health ORDER BY 2").fetchall()
        events = conn.execute("SELECT ts, detail FROM device_events").fetchall()
        days = conn.execute(
            "SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM device_health"
            " UNION SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM device_events"
        ).fetchall()
    assert health == [(NOW, 0), (NOW - timedelta(minutes=10), plausible), (NOW, YEAR_5138_MS)]
    assert events == [(NOW, {"part": "printer", "device_ts": YEAR_5138_MS})]
    assert days == [(NOW.date(),)]  # no chunk or partition for 1970 or the year 5138


async def test_native_rows_past_retention_are_dropped_from_the_default_partition(store, machine_database):
    if store.mode is not StorageMode.NATIVE:
        pytest.skip(NATIVE_ONLY)
    old = int((NOW - timedelta(days=40)).timestamp() * 1000)  # a backlog older than the 30 days kept
    await write_batch(
        store._pool, [Received(NOW, _health("T2", old)), Received(NOW, _health("T2", int(NOW.timestamp() * 1000)))]
    )
    report = await store.maintain(NOW)
    assert report.dropped_rows == 1
    assert not any(name.endswith(f"{NOW - timedelta(days=40):%Y%m%d}") for name in report.created)
    with psycopg.connect(machine_database) as conn:
        assert conn.execute("SELECT count(*) FROM device_health").fetchone()[0] == 1
    assert store.describe()["compress_after_days"] == "none (native partitions)"


async def test_timescale_policies_follow_the_settings(store, machine_database):
    if store.mode is not StorageMode.TIMESCALEDB:
        pytest.skip(NEEDS_TIMESCALE)
    await store.maintain(NOW)
    await store.maintain(NOW)  # once per process: nothing to do again
    with psycopg.connect(machine_database) as conn:
        policies = conn.execute(
            "SELECT hypertable_name, proc_name, COALESCE(config->>'drop_after', config->>'compress_after')::interval"
            " FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL ORDER BY 1, 2"
        ).fetchall()
    assert policies == [
        ("device_events", "policy_compression", timedelta(days=5)),
        ("device_events", "policy_retention", timedelta(days=30)),
        ("device_health", "policy_compression", timedelta(days=5)),
        ("device_health", "policy_retention", timedelta(days=30)),
    ]
    # Another process started with other settings moves the policies to them.
    again = TelemetryStore(store._pool, retention_days=45, compress_after_days=5)
    await again.detect()
    await again.maintain(NOW)
    with psycopg.connect(machine_database) as conn:
        kept = conn.execute(
            "SELECT (config->>'drop_after')::interval FROM timescaledb_information.jobs"
            " WHERE proc_name = 'policy_retention' AND hypertable_name IS NOT NULL"
        ).fetchall()
    assert kept == [(timedelta(days=45),), (timedelta(days=45),)]


_JOB = {"hypertable": "device_health", "last_run_started_at": NOW, "total_runs": 4, "next_start": NOW}


def test_storage_metrics_name_each_job_and_its_failures():
    status = StorageStatus(
        mode=StorageMode.TIMESCALEDB.value,
        reason="timescaledb loaded in this database",
        retention_days=90,
        compress_after_days=3,
        jobs=[
            Job(**_JOB, job_id=1000, proc="policy_compression", last_run_status="Failed", total_failures=3),
            Job(**_JOB, job_id=1001, proc="policy_retention", last_run_status="Success", total_failures=0),
        ],
        errors=[],
    )
    text = storage_metrics(status)
    assert "haodian_storage_timescaledb 1\n" in text
    assert (
        'haodian_timescaledb_job_failures_total{job_id="1000",proc="policy_compression",hypertable="device_health"} 3'
        in text
    )
    assert (
        'haodian_timescaledb_job_last_run_failed{job_id="1000",proc="policy_compression",hypertable="device_health"} 1'
        in text
    )
    assert (
        'haodian_timescaledb_job_last_run_failed{job_id="1001",proc="policy_retention",hypertable="device_health"} 0'
        in text
    )
    assert [j.job_id for j in status.failing] == [1000]


async def test_the_server_says_which_storage_and_counts_device_times_it_did_not_use(
    tmp_path, machine_mosquitto, machine_database, server_keys, unique
):
    host, port = machine_mosquitto
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"t{unique}", telemetry_retention_days=60)
    async with ServerStack(
        settings,
        parts={Part.FLEET},
        endpoint=BrokerEndpoint(host, port),
        database_url=machine_database,
        keys=server_keys,
    ) as server:
        assert server.ingest is not None
        device = f"TS{unique}"
        async with aiomqtt.Client(host, port, identifier=f"pub-{unique}") as client:
            now_ms = int(datetime.now(tz=UTC).timestamp() * 1000)
            for ts in (YEAR_5138_MS, 0, now_ms):
                await client.publish(topics.up(device, topics.Up.HEALTH), _health(device, ts).to_json(), qos=1)

        async def stored() -> bool:  # ours: the machine's broker carries other tests' devices too
            async with await psycopg.AsyncConnection.connect(machine_database) as conn:
                cur = await conn.execute("SELECT count(*) FROM device_health WHERE device_id = %s", (device,))
                return (await cur.fetchone())[0] == 3

        await eventually(stored, what="our three health reports stored")
        refused = server.ingest.stats.clock_refused
        assert refused >= 2  # ours two, and any other device's on the shared broker
        async with await api_client(server) as http:
            status = (await http.get("/api/v1/storage")).json()
            metrics = (await http.get("/metrics")).text
        timescale = status["mode"] == StorageMode.TIMESCALEDB.value
        assert status["retention_days"] == 60
        assert status["reason"]
        assert (status["compress_after_days"] is not None) == timescale
        assert (len(status["jobs"]) > 0) == timescale
        assert f"haodian_storage_timescaledb {int(timescale)}\n" in metrics
        counted = next(line for line in metrics.splitlines() if line.startswith("haodian_ingest_clock_refused_total "))
        assert int(counted.split()[1]) >= refused
