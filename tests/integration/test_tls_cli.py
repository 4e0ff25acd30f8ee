"""`haodian tls device` issues certificates only for provisioned devices, records each one so
that revoking the device revokes it, and never for an identity the servers use (issue 30)."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.identity.access import device_identity_refusal
from fleet_server.identity.store import DeviceCredentials

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def tls(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haodian.cli", "tls", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
        timeout=120,
    )


def test_device_identities_never_take_a_servers_name() -> None:
    def refusal(name: str) -> str | None:
        return device_identity_refusal(name, server_accounts={"haodian-server"}, client_prefix="haodian")

    assert refusal("SPK-0001") is None
    for name in ("haodian-server", "haodian", "haodian-bridge", "haodian-ingest", "a b", "x/y", "#", ""):
        assert refusal(name) is not None, name


async def test_certificates_only_for_provisioned_devices_and_never_for_server_identities(
    tmp_path, machine_database, unique
) -> None:
    env = {"HAODIAN_DATABASE_URL": machine_database, "HAODIAN_DATA_DIR": str(tmp_path / "data")}
    ca, out = tmp_path / "ca", tmp_path / "out"
    assert tls("dev-ca", "--out", str(ca), env=env).returncode == 0
    for reserved in ("haodian-server", "haodian-bridge", "haodian-ingest"):
        done = tls("device", reserved, "--ca", str(ca), "--out", str(out), env=env)
        assert done.returncode != 0
        assert "refused" in done.stderr
        assert not (out / f"{reserved}.pem").exists()
    device = f"TLS{unique}"
    unprovisioned = tls("device", device, "--ca", str(ca), "--out", str(out), env=env)
    assert unprovisioned.returncode != 0
    assert "not provisioned" in unprovisioned.stderr
    assert not (out / f"{device}.pem").exists()
    async with open_pool(machine_database, max_size=1) as pool:
        await migrate(pool)
        await DeviceCredentials(pool, os.urandom(32)).provision(device, by="test")
    issued = tls("device", device, "--ca", str(ca), "--out", str(out), env=env)
    assert issued.returncode == 0, issued.stderr
    assert (out / f"{device}.pem").exists()
    async with await psycopg.AsyncConnection.connect(machine_database) as conn:
        cur = await conn.execute("SELECT cert_serial FROM device_credentials WHERE device_id = %s", (device,))
        row = await cur.fetchone()
    assert row is not None
    assert row[0] is not None
    assert str(row[0]) in issued.stdout
    no_database = tls("device", device, "--ca", str(ca), "--out", str(out), env={"HAODIAN_DATABASE_URL": ""})
    assert no_database.returncode != 0
    assert "HAODIAN_DATABASE_URL" in no_database.stderr
