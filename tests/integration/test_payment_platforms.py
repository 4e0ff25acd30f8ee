"""Alipay and WeChat Pay notifications through the bridge's HTTP API, on the embedded broker and
database, with real agents: the platform's answer only once the payment is recorded, one
announcement per speaker, repeats and tampering announced nothing."""

from __future__ import annotations

from contextlib import AsyncExitStack

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge_agent.hardware.audio import MemorySink
from haodian.settings import Settings
from payment_bridge.keyring import PUBLIC_KEY_ID_PREFIX
from simulators.platforms import (
    ALIPAY_APP_ID,
    SP_MCHID,
    WECHATPAY_RETRY_S,
    AlipayPlatform,
    WechatPayPlatform,
    deliver_until_accepted,
)
from tests.integration.conftest import agent_for, api_client, eventually, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

APIV3_KEY = b"test-only-apiv3-key-0123456789ab"
WECHAT_KEY_ID = f"{PUBLIC_KEY_ID_PREFIX}0111200000000000000000000000000009"


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def platform_keys() -> dict[str, rsa.RSAPrivateKey]:
    """Stand-ins for the platforms' keys: generated per run, test-only."""
    return {name: rsa.generate_private_key(public_exponent=65537, key_size=2048) for name in ("alipay", "wechat")}


@pytest.fixture
async def stack(tmp_path, embedded_database, server_keys, platform_keys, unique):
    keys_dir = tmp_path / "platform-keys"
    (keys_dir / "wechatpay").mkdir(parents=True)
    (keys_dir / "alipay.pem").write_bytes(_public_pem(platform_keys["alipay"]))
    (keys_dir / "wechatpay" / f"{WECHAT_KEY_ID}.pem").write_bytes(_public_pem(platform_keys["wechat"]))
    (keys_dir / "apiv3.key").write_bytes(APIV3_KEY)
    settings = Settings(
        data_dir=tmp_path,
        http_port=0,
        mqtt_client_prefix=f"p{unique}",
        ack_timeout_s=1.0,
        alipay_public_key_file=keys_dir / "alipay.pem",
        wechatpay_keys_dir=keys_dir / "wechatpay",
        wechatpay_apiv3_key_file=keys_dir / "apiv3.key",
        wechatpay_mchids=[SP_MCHID],
        alipay_app_ids=[ALIPAY_APP_ID],
    )
    async with in_process_stack(settings, embedded_database, server_keys) as (broker, server):
        yield broker, server, embedded_database


async def _speakers(exits, broker, server_keys, tmp_path, names):
    sinks = {name: MemorySink() for name in names}
    for name, sink in sinks.items():
        agent = await exits.enter_async_context(agent_for(name, broker, server_keys, tmp_path, sink))
        await agent.wait_connected(10)
    return sinks


async def test_alipay_payment_plays_once_on_each_of_a_merchants_three_speakers(
    stack, server_keys, platform_keys, tmp_path, unique
):
    broker, server, database_url = stack
    merchant = f"M{unique}"
    async with AsyncExitStack() as exits:
        sinks = await _speakers(exits, broker, server_keys, tmp_path, [f"S{unique}{i}" for i in range(3)])
        http = await exits.enter_async_context(await api_client(server))
        for device in sinks:
            assert (await http.post("/api/v1/bindings", json={"device_id": device, "merchant_id": merchant})).is_success
        alipay = AlipayPlatform(platform_keys["alipay"])
        trade = f"2026112122001{unique}"
        body, headers = alipay.notification(trade_no=trade, merchant_id=merchant, amount_fen=5460)
        answer = await http.post("/api/v1/notifications/alipay", content=body, headers=headers)
        assert (answer.status_code, answer.text) == (200, "success")

        async def all_played() -> bool:
            payment = (await http.get(f"/api/v1/payments/alipay:{trade}")).json()
            return [d["status"] for d in payment["deliveries"]] == ["played"] * 3

        await eventually(all_played, what="the three speakers to play the payment")
        # Alipay sends it again, then TRADE_FINISHED for the same trade: both answered, neither announced.
        again = await http.post("/api/v1/notifications/alipay", content=body, headers=headers)
        finished, finished_headers = alipay.notification(
            trade_no=trade, merchant_id=merchant, amount_fen=5460, status="TRADE_FINISHED"
        )
        later = await http.post("/api/v1/notifications/alipay", content=finished, headers=finished_headers)
        assert [again.text, later.text] == ["success", "success"]
        # A forged one (amount raised, signature kept) is refused and recorded, not announced.
        forged = body.replace(b"total_amount=54.60", b"total_amount=546.00")
        refused = await http.post("/api/v1/notifications/alipay", content=forged, headers=headers)
        assert (refused.status_code, refused.text) == (401, "fail")
    assert [[r.text for r in sink.played] for sink in sinks.values()] == [["支付宝到账五十四点六元"]] * 3
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM payments").fetchone() == (1,)
        assert conn.execute("SELECT source, code FROM rejected_notifications").fetchall() == [
            ("alipay", "SIGNATURE_INVALID")
        ]


async def test_wechatpay_payment_is_answered_204_and_played(stack, server_keys, platform_keys, tmp_path, unique):
    broker, server, _ = stack
    merchant = f"W{unique}"
    async with AsyncExitStack() as exits:
        sinks = await _speakers(exits, broker, server_keys, tmp_path, [f"W{unique}"])
        http = await exits.enter_async_context(await api_client(server))
        device = next(iter(sinks))
        assert (await http.post("/api/v1/bindings", json={"device_id": device, "merchant_id": merchant})).is_success
        wechat = WechatPayPlatform(platform_keys["wechat"], serial=WECHAT_KEY_ID, apiv3_key=APIV3_KEY)
        transaction = f"42000000002026112{unique}"
        body, headers = wechat.notification(transaction_id=transaction, merchant_id=merchant, amount_fen=1250)
        answer = await http.post("/api/v1/notifications/wechatpay", content=body, headers=headers)
        assert answer.status_code == 204

        async def played() -> bool:
            payment = (await http.get(f"/api/v1/payments/wechat:{transaction}")).json()
            return [d["status"] for d in payment["deliveries"]] == ["played"]

        await eventually(played, what="the speaker to play the payment")
        assert (await http.post("/api/v1/notifications/wechatpay", content=body, headers=headers)).status_code == 204
        tampered = {**headers, "Wechatpay-Nonce": "another"}
        refused = await http.post("/api/v1/notifications/wechatpay", content=body, headers=tampered)
        assert refused.status_code == 401
        assert refused.json()["code"] == "FAIL"
        assert refused.json()["message"].startswith("SIGNATURE_INVALID")

        # The backend finds the binding by the serial number on the device (reported in its hello).
        async def by_serial() -> bool:
            found = (await http.get("/api/v1/bindings", params={"serial": device})).json()
            return [(b["device_id"], b["merchant_id"]) for b in found] == [(device, merchant)]

        await eventually(by_serial, what="the binding to be found by the device's serial")
        assert (await http.get("/api/v1/bindings", params={"serial": "NO-SUCH-SERIAL"})).json() == []
    assert [r.text for r in sinks[device].played] == ["微信收款十二点五元"]


async def test_partner_mode_payments_are_routed_by_the_merchants_platform_ids_and_unknown_ones_still_received(
    stack, server_keys, platform_keys, tmp_path, unique
):
    """As an aggregator is paid: WeChat Pay partner mode names the merchant by its sub_mchid (no
    attach, or attach as free text), Alipay by its seller_id; a merchant we do not know is still
    received (answered success, so the platform stops), recorded and listed UNKNOWN_MERCHANT; a
    notification for another service provider is refused and recorded."""
    broker, server, database = stack
    merchant, device = f"PM{unique}", f"PD{unique}"
    sub_mchid, seller_id = f"19{int(unique, 16) % 10**8:08d}", f"2088{int(unique, 16) % 10**12:012d}"
    registry = (
        "city_id,district_id,store_id,merchant_id,merchant_name,wechat_sub_mchid,alipay_seller_id,device_id,serial,model\n"
        f"BJ,WJ,S-WJ,{merchant},商户,{sub_mchid},{seller_id},{device},SN{device},HD-S1\n"
    )
    async with AsyncExitStack() as exits:
        sinks = await _speakers(exits, broker, server_keys, tmp_path, [device])
        http = await exits.enter_async_context(await api_client(server))
        imported = await http.post(
            "/api/v1/registry/import",
            params={"dry_run": "false"},
            content=registry,
            headers={"content-type": "text/csv"},
        )
        assert imported.json()["applied"] == 1, imported.text
        shown = (await http.get("/api/v1/registry/merchants", params={"merchant_id": merchant})).json()
        assert (shown[0]["wechat_sub_mchid"], shown[0]["alipay_seller_id"]) == (sub_mchid, seller_id)
        wechat = WechatPayPlatform(platform_keys["wechat"], serial=WECHAT_KEY_ID, apiv3_key=APIV3_KEY)
        alipay = AlipayPlatform(platform_keys["alipay"])

        async def send(path: str, body: bytes, headers: dict[str, str]) -> list[int]:
            async def once() -> int:
                return (await http.post(path, content=body, headers=headers)).status_code

            return await deliver_until_accepted(once, WECHATPAY_RETRY_S)

        paid = f"4200000001{unique}"
        body, headers = wechat.notification(transaction_id=paid, merchant_id=None, amount_fen=1250, sub_mchid=sub_mchid)
        assert await send("/api/v1/notifications/wechatpay", body, headers) == [204]
        trade = f"2026120122001{unique}"
        body, headers = alipay.notification(trade_no=trade, merchant_id=None, amount_fen=300, seller_id=seller_id)
        assert await send("/api/v1/notifications/alipay", body, headers) == [200]

        async def played() -> bool:
            return len(sinks[device].played) == 2

        await eventually(played, what="both payments to play on the merchant's speaker")
        assert sorted(r.text for r in sinks[device].played) == ["微信收款十二点五元", "支付宝到账三元"]
        for payment in (f"wechat:{paid}", f"alipay:{trade}"):
            assert (await http.get(f"/api/v1/payments/{payment}")).json()["merchant_id"] == merchant

        # A sub_mchid no merchant of ours holds: answered at the first try, recorded, not announced.
        lost = f"4200000002{unique}"
        body, headers = wechat.notification(
            transaction_id=lost, merchant_id=None, amount_fen=800, sub_mchid="1999999999"
        )
        assert await send("/api/v1/notifications/wechatpay", body, headers) == [204]
        listed = (await http.get("/api/v1/payments/not-announced")).json()
        [entry] = [e for e in listed if e["payment_id"] == f"wechat:{lost}"]
        assert (entry["code"], entry["merchant_id"], entry["platform_merchant_id"]) == (
            "UNKNOWN_MERCHANT",
            None,
            "1999999999",
        )
        # For another service provider: refused, and kept with the reason.
        body, headers = wechat.notification(
            transaction_id=f"4200000003{unique}",
            merchant_id=None,
            amount_fen=100,
            sub_mchid=sub_mchid,
            sp_mchid="1888888888",
        )
        refused = await http.post("/api/v1/notifications/wechatpay", content=body, headers=headers)
        assert refused.status_code == 400
        assert refused.json()["message"].startswith("NOT_OUR_PROVIDER")
    with psycopg.connect(database) as conn:
        codes = [row[0] for row in conn.execute("SELECT code FROM rejected_notifications WHERE source = 'wechatpay'")]
    assert codes == ["NOT_OUR_PROVIDER"]
    assert len(sinks[device].played) == 2  # nothing else was announced
