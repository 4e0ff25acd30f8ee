"""`haodian fleet retire` and `recompute` against the real server (embedded database): the
device leaves the fleet with its tasks closed and its credentials revoked; the figure rollups are
rebuilt from raw history and agree with it; refusals come back readable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from firmware_protocols.messages import Health
from fleet_server.auth.roles import Role
from fleet_server.ingest.consumer import Received, write_batch
from haodian.cli import build_parser
from haodian.cli.fleet import run
from haodian.settings import Settings
from simulators.registry import register
from tests.integration.conftest import in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def _health(device: str) -> Health:
    return Health(device_id=device, ts=1, uptime_s=1, volume=5, queue_depth=0, played_total=0)


async def test_retiring_a_device_and_recomputing_the_figures_from_the_command_line(
    tmp_path, embedded_database, server_keys, unique, capsys
):
    def fleet(*argv: str) -> int:
        return run(build_parser().parse_args(["fleet", *argv]))

    with pytest.raises(SystemExit):
        fleet("retire", "D1", "--reason", "misplaced")  # not a reason: argparse refuses it
    capsys.readouterr()
    device = f"RT{unique}"
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"t{unique}")
    async with in_process_stack(settings, embedded_database, server_keys) as (_, server):
        await register(server.pool, devices=[device])
        await server.credentials.provision(device, by="test")
        viewer = ("--server", server.base_url, "--token", await server.auth.service_token("t-viewer", Role.OPS_VIEWER))
        with pytest.raises(SystemExit, match="403"):
            await asyncio.to_thread(fleet, *viewer, "retire", device, "--reason", "stolen")
        admin = ("--server", server.base_url, "--token", await server.auth.service_token("t-admin", Role.OPS_ADMIN))
        retire = (*admin, "retire", device, "--reason", "stolen", "--note", "商户报案")
        assert await asyncio.to_thread(fleet, *retire) == 0
        out = capsys.readouterr().out
        assert f"已退役 retired: {device} (被盗 stolen)" in out, out
        status = await server.credentials.status(device)
        assert status is not None
        assert status.revoked_at is not None
        async with server.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT state, cause FROM device_states WHERE device_id = %s ORDER BY seq", (device,)
            )
            assert (await cur.fetchall())[-1] == ("retired", "retired_stolen")
        with pytest.raises(SystemExit, match="已退役"):
            await asyncio.to_thread(fleet, *retire)
        with pytest.raises(SystemExit, match="404"):
            await asyncio.to_thread(fleet, *admin, "retire", f"NO{unique}", "--reason", "lost")
        # The rollups rebuilt from raw history, and checked against it.
        other = f"RC{unique}"
        await register(server.pool, devices=[other])
        await write_batch(server.pool, [Received(datetime.now(tz=UTC) - timedelta(hours=3), _health(other))])
        capsys.readouterr()
        with pytest.raises(SystemExit, match="403"):
            await asyncio.to_thread(fleet, *viewer, "recompute")
        assert await asyncio.to_thread(fleet, *admin, "recompute") == 0
        out = capsys.readouterr().out
        assert "已重算 rebuilt up to" in out, out
        assert "一致 they agree" in out, out
