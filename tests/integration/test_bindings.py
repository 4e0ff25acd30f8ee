"""Bindings as the backend makes them, on the real server (embedded broker and database) with a
real agent: only devices and merchants in the registry, each change audited and spoken on the
device (设备绑定成功 / 设备已解绑), none of it counted as a payment's announcement."""

from __future__ import annotations

import pytest

from edge_agent.hardware.audio import MemorySink
from edge_agent.speech import ALERT_WORDS
from firmware_protocols.messages import AlertCode
from fleet_server.auth.roles import Role
from haodian.settings import Settings
from simulators.registry import register
from tests.integration.conftest import agent_for, api_client, eventually, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BOUND, UNBOUND = ALERT_WORDS[AlertCode.BOUND], ALERT_WORDS[AlertCode.UNBOUND]


async def test_bindings_need_the_registry_and_each_change_is_audited_and_spoken(
    tmp_path, embedded_database, server_keys, unique
):
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"b{unique}", ack_timeout_s=1.0)
    device, merchant, other = f"BD{unique}", f"BM{unique}", f"BN{unique}"
    async with in_process_stack(settings, embedded_database, server_keys) as (broker, server):
        sink = MemorySink()
        async with (
            agent_for(device, broker, server_keys, tmp_path, sink) as agent,
            await api_client(server, Role.BACKEND) as backend,
        ):
            await agent.wait_connected(10)

            async def known() -> bool:
                async with await api_client(server) as ops:
                    return (await ops.get(f"/api/v1/devices/{device}")).status_code == 200

            await eventually(known, what="the device's hello to be stored")
            # The fleet knows the device from its hello; its merchant is not in the registry.
            refused = await backend.post("/api/v1/bindings", json={"device_id": f"NO{unique}", "merchant_id": merchant})
            assert (refused.status_code, refused.json()["error"]["code"]) == (422, "DEVICE_NOT_REGISTERED")
            refused = await backend.post("/api/v1/bindings", json={"device_id": device, "merchant_id": merchant})
            assert (refused.status_code, refused.json()["error"]["code"]) == (422, "MERCHANT_NOT_REGISTERED")
            assert refused.json()["error"]["message_zh"] == f"商户 {merchant} 不在台账中，请先导入"
            await register(server.pool, merchants=[merchant, other])

            async def said(*texts: str) -> None:
                async def heard() -> bool:
                    return [r.text for r in sink.played] == list(texts)

                await eventually(heard, what=f"the speaker to say {texts}")

            bind = {"device_id": device, "merchant_id": merchant}
            assert (await backend.post("/api/v1/bindings", json=bind)).status_code == 200
            await said(BOUND)
            assert (await backend.post("/api/v1/bindings", json=bind)).status_code == 200  # no change: nothing said
            moved = await backend.post("/api/v1/bindings", json={"device_id": device, "merchant_id": other})
            assert moved.json()["merchant_id"] == other
            await said(BOUND, BOUND)
            assert (await backend.delete(f"/api/v1/bindings/{device}")).status_code == 204
            await said(BOUND, BOUND, UNBOUND)
            missing = await backend.delete(f"/api/v1/bindings/{device}")
            assert (missing.status_code, missing.json()["error"]["code"]) == (404, "BINDING_NOT_FOUND")
            async with await api_client(server) as ops:
                summary = (await ops.get("/api/v1/deliveries/summary")).json()
                announcements = (await ops.get(f"/api/v1/devices/{device}/announcements")).json()
        assert (summary["payments"], summary["deliveries"]) == (0, 0)  # alerts are not payments
        assert announcements == []
        audit = [
            (e.action, e.target, e.outcome)
            for e in reversed(await server.auth.audit_log())
            if e.action.startswith("binding.")
        ]
        assert audit == [
            ("binding.bind", f"NO{unique}", "refused"),
            ("binding.bind", device, "refused"),
            ("binding.bind", device, "ok"),
            ("binding.bind", device, "ok"),
            ("binding.bind", device, "ok"),
            ("binding.unbind", device, "ok"),
        ]
