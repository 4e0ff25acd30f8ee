"""`haodian server --workers N`: what it refuses, how it sets up each worker, how it supervises."""

from __future__ import annotations

import asyncio
import sys

import pytest

from haodian import workers
from haodian.workers import WorkersError, supervise, worker_plan
from tests.processes import alive

pytestmark = pytest.mark.anyio

SHARED = {"HAODIAN_MQTT_URL": "mqtt://127.0.0.1:1883", "HAODIAN_DATABASE_URL": "postgresql://x/y"}


def test_only_stateless_parts_run_as_several_workers() -> None:
    with pytest.raises(WorkersError, match="run fleet once"):
        worker_plan(parts={"fleet", "bridge"}, workers=2, port=8100, env=SHARED)


def test_workers_need_a_broker_and_database_they_share() -> None:
    with pytest.raises(WorkersError, match="HAODIAN_MQTT_URL and HAODIAN_DATABASE_URL"):
        worker_plan(parts={"bridge"}, workers=2, port=8100, env={})
    with pytest.raises(WorkersError, match="HAODIAN_DATABASE_URL"):
        worker_plan(parts={"bridge"}, workers=2, port=8100, env={"HAODIAN_MQTT_URL": "mqtt://h"})


def test_each_worker_shares_the_port_and_the_group_under_its_own_client_ids() -> None:
    port, envs = worker_plan(parts={"bridge", "ingest"}, workers=3, port=8100, env=SHARED)
    assert port == 8100
    assert [e["HAODIAN_MQTT_CLIENT_PREFIX"] for e in envs] == ["haodian-w0", "haodian-w1", "haodian-w2"]
    assert {e["HAODIAN_MQTT_SHARE_GROUP"] for e in envs} == {"haodian"}
    assert all(e["HAODIAN_HTTP_REUSE_PORT"] == "true" for e in envs)
    _, envs = worker_plan(
        parts={"bridge"},
        workers=2,
        port=0,
        env=SHARED | {"HAODIAN_MQTT_SHARE_GROUP": "g", "HAODIAN_MQTT_CLIENT_PREFIX": "p"},
    )
    assert [e["HAODIAN_MQTT_CLIENT_PREFIX"] for e in envs] == ["p-w0", "p-w1"]
    assert envs[0]["HAODIAN_MQTT_SHARE_GROUP"] == "g"


async def test_a_worker_that_keeps_dying_ends_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "MAX_QUICK_DEATHS", 2)
    with pytest.raises(WorkersError, match="exited 2 times in a row"):
        await asyncio.wait_for(supervise([sys.executable, "-c", "raise SystemExit(3)"], [{}]), 30)


async def test_stopping_the_supervisor_stops_its_workers(tmp_path) -> None:
    pids = tmp_path / "pids"
    script = f"import os, time; open({str(pids)!r}, 'a').write(str(os.getpid()) + chr(10)); time.sleep(600)"
    task = asyncio.create_task(supervise([sys.executable, "-c", script], [{}, {}]))
    for _ in range(100):
        await asyncio.sleep(0.1)
        if pids.exists() and len(pids.read_text().split()) == 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for pid in pids.read_text().split():
        assert not alive(int(pid)), f"worker {pid} still running"
