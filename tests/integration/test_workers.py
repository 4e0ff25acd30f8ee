"""`haodian server --parts bridge --workers 2` on the machine's Mosquitto and PostgreSQL: two
processes answer on one port, each with its own MQTT identity, and SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from haodian.keys import dev_key_paths, ensure_dev_keys
from simulators.netproxy import free_port
from tests.processes import alive, children

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_two_bridge_workers_share_one_port_and_stop_together(
    machine_database, machine_mosquitto, tmp_path: Path, unique: str
) -> None:
    ensure_dev_keys(tmp_path)
    signing, _, backend_public = dev_key_paths(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "HAODIAN_MQTT_URL": f"mqtt://{machine_mosquitto[0]}:{machine_mosquitto[1]}",
        "HAODIAN_DATABASE_URL": machine_database,
        "HAODIAN_DATA_DIR": str(tmp_path),
        "HAODIAN_SIGNING_KEY_FILE": str(signing),
        "HAODIAN_BACKEND_PUBLIC_KEY_FILE": str(backend_public),
        "HAODIAN_MQTT_CLIENT_PREFIX": f"t{unique}",
        "HAODIAN_MQTT_SHARE_GROUP": f"t{unique}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "haodian", "server", "--parts", "bridge", "--workers", "2", "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        first_line = await asyncio.wait_for(proc.stdout.readline(), 30) if proc.stdout else b""
        assert f"x 2 workers on http://127.0.0.1:{port}".encode() in first_line
        instances: set[str] = set()
        for _ in range(300):
            try:
                # A new connection each time: the kernel spreads connections over the workers.
                async with httpx.AsyncClient(timeout=2) as client:
                    answer = await client.get(f"http://127.0.0.1:{port}/healthz")
                instances.add(answer.json()["instance"])
            except httpx.HTTPError:
                pass
            if len(instances) == 2:
                break
            await asyncio.sleep(0.1)
        assert instances == {f"t{unique}-w0", f"t{unique}-w1"}
        workers = children(proc.pid)
        assert len(workers) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
    assert not any(alive(pid) for pid in workers)
