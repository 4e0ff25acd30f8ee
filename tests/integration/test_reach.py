"""Who reaches which payment figures (issue 30): each account sees its own, decided in SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleet_server.auth.roles import Role
from haodian.server import ServerStack
from haodian.settings import Settings
from simulators.backend import PaymentBackend
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
