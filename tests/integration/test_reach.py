"""Who reaches which payment figures (issue 30): each account sees its own, decided in SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleet_server.auth.roles import Role
from haodian.server import ServerStack
from haodian.settings import Settings
from simulators.backend import PaymentBackend
from simulators.registry import register
from tests.integration.conftest import api_client, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def server(tmp_path, embedded_database, server_keys, unique) -> AsyncIterator[ServerStack]:
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"r{unique}", ack_timeout_s=1.0)
    async with in_process_stack(settings, embedded_database, server_keys) as (_, stack):
        yield stack


async def test_a_merchant_reads_only_its_own_delivery_figures(server, backend_key, unique) -> None:
    mine, theirs = f"MA{unique}", f"MB{unique}"
    counts = {mine: 2, theirs: 3}
    async with await api_client(server) as ops:
        for merchant, device in ((mine, f"DA{unique}"), (theirs, f"DB{unique}")):
            await register(server.pool, devices=[device], merchants=[merchant])
            bound = await ops.post("/api/v1/bindings", json={"device_id": device, "merchant_id": merchant})
            assert bound.is_success, bound.text
            backend = PaymentBackend(backend_key, server.base_url, [merchant])
            for _ in range(counts[merchant]):
                body, headers = backend.notification()
                answer = await ops.post("/api/v1/notifications/backend", content=body, headers=headers)
                assert answer.is_success, answer.text
        fleet = (await ops.get("/api/v1/deliveries/summary")).json()
    assert fleet["payments"] == 5
    assert fleet["deliveries"] == 5
    for merchant, expected in counts.items():
        async with await api_client(server, Role.MERCHANT, merchant_id=merchant) as http:
            own = (await http.get("/api/v1/deliveries/summary")).json()
        assert own["payments"] == expected, merchant
        assert own["deliveries"] == expected, merchant


async def test_after_a_device_moves_its_new_merchant_sees_only_its_own_period(server, backend_key, unique) -> None:
    device, before, after = f"MV{unique}", f"MB{unique}", f"MA{unique}"
    async with await api_client(server) as ops:

        async def pay(merchant: str, count: int) -> None:
            backend = PaymentBackend(backend_key, server.base_url, [merchant])
            for _ in range(count):
                body, headers = backend.notification()
                answer = await ops.post("/api/v1/notifications/backend", content=body, headers=headers)
                assert answer.is_success, answer.text

        await register(server.pool, devices=[device], merchants=[before])

        assert (await ops.post("/api/v1/bindings", json={"device_id": device, "merchant_id": before})).is_success
        await pay(before, 2)
        assert (await ops.delete(f"/api/v1/bindings/{device}")).status_code == 204
        await register(server.pool, devices=[device], merchants=[after])
        assert (await ops.post("/api/v1/bindings", json={"device_id": device, "merchant_id": after})).is_success
        await pay(after, 1)
        # A device row, as the ingest would have made it at the device's first hello.
        async with server.pool.connection() as conn:
            await conn.execute("INSERT INTO devices (device_id) VALUES (%s) ON CONFLICT DO NOTHING", (device,))
            # The device's own record: a state in B's period, and one in A's.
            await conn.execute(
                "INSERT INTO device_states (device_id, at, state, cause) SELECT %s, bound_at + d, s, 'test'"
                " FROM bindings, (VALUES (interval '-1 minute', 'faulty'), (interval '1 millisecond', 'online'))"
                " v(d, s)"
                " WHERE device_id = %s",
                (device, device),
            )
        everything = (await ops.get(f"/api/v1/devices/{device}/announcements")).json()
        assert len(everything) == 3  # ops see the device's whole history
    async with await api_client(server, Role.MERCHANT, merchant_id=after) as merchant:
        mine = (await merchant.get(f"/api/v1/devices/{device}/announcements")).json()
        timeline = (await merchant.get(f"/api/v1/devices/{device}/timeline")).json()
    assert len(mine) == 1
    shown = [e for e in timeline["entries"] if e["kind"] == "announcement"]
    assert [e["detail"]["payment_id"] for e in shown] == [mine[0]["payment_id"]]
    assert [e["detail"]["state"] for e in timeline["entries"] if e["kind"] == "state"] == ["online"]
    async with await api_client(server, Role.MERCHANT, merchant_id=before) as old_owner:
        assert (await old_owner.get(f"/api/v1/devices/{device}/announcements")).status_code in (403, 404)
