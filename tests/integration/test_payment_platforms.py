"""Alipay and WeChat Pay notifications through the bridge's HTTP API, on the embedded broker and
database, with real agents: the platform's answer only once the payment is recorded, one
announcement per speaker, repeats and tampering announced nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge_agent.hardware.audio import MemorySink
from firmware_protocols.messages import Channel
from haodian.settings import Settings
from payment_bridge.keyring import PUBLIC_KEY_ID_PREFIX
from simulators.backend import PaymentBackend
from simulators.platforms import (
    ALIPAY_APP_ID,
    SP_MCHID,
    WECHATPAY_RETRY_S,
    AlipayPlatform,
    UnionPayChain,
    UnionPayPlatform,
    WechatPayPlatform,
    deliver_until_accepted,
)
from simulators.registry import register
from tests.integration.conftest import agent_for, announced, api_client, eventually, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

APIV3_KEY = b"test-only-apiv3-key-0123456789ab"
WECHAT_KEY_ID = f"{PUBLIC_KEY_ID_PREFIX}0111200000000000000000000000000009"


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def unionpay_chain() -> UnionPayChain:
    return UnionPayChain.generate()


@pytest.fixture(scope="module")
def platform_keys() -> dict[str, rsa.RSAPrivateKey]:
    """Stand-ins for the platforms' keys: generated per run, test-only."""
    return {name: rsa.generate_private_key(public_exponent=65537, key_size=2048) for name in ("alipay", "wechat")}


@pytest.fixture
async def stack(tmp_path, embedded_database, server_keys, platform_keys, unionpay_chain, unique):
    keys_dir = tmp_path / "platform-keys"
    (keys_dir / "wechatpay").mkdir(parents=True)
    (keys_dir / "alipay.pem").write_bytes(_public_pem(platform_keys["alipay"]))
    (keys_dir / "wechatpay" / f"{WECHAT_KEY_ID}.pem").write_bytes(_public_pem(platform_keys["wechat"]))
    (keys_dir / "apiv3.key").write_bytes(APIV3_KEY)
    (keys_dir / "unionpay-root.pem").write_bytes(unionpay_chain.pem(unionpay_chain.root))
    (keys_dir / "unionpay-middle.pem").write_bytes(unionpay_chain.pem(unionpay_chain.middle))
    settings = Settings(
        unionpay_root_cert_file=keys_dir / "unionpay-root.pem",
        unionpay_middle_cert_file=keys_dir / "unionpay-middle.pem",
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
            await register(server.pool, devices=[device], merchants=[merchant])
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
    assert [[r.text for r in announced(sink)] for sink in sinks.values()] == [["支付宝到账五十四点六元"]] * 3
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM payments WHERE kind <> 'alert'").fetchone() == (1,)
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
        await register(server.pool, devices=[device], merchants=[merchant])
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
    assert [r.text for r in announced(sinks[device])] == ["微信收款十二点五元"]


@dataclass
class Shop:
    """A registered merchant with its platform ids and one real speaker, and the API as ops."""

    merchant: str
    device: str
    sub_mchid: str
    seller_id: str
    mer_id: str
    http: httpx.AsyncClient
    sink: MemorySink

    async def post(self, path: str, notification: tuple[bytes, dict[str, str]], status: int = 200) -> httpx.Response:
        answer = await self.http.post(path, content=notification[0], headers=notification[1])
        assert answer.status_code == status, answer.text
        return answer

    async def heard(self, count: int) -> None:
        async def enough() -> bool:
            return len(self.sink.played) >= count

        await eventually(enough, what=f"{count} announcements")

    async def payment(self, payment_id: str) -> dict[str, Any]:
        return dict((await self.http.get(f"/api/v1/payments/{payment_id}")).json())

    async def all_acked(self) -> list[str]:
        """What the speaker played, once every announcement is acked."""

        async def acked() -> bool:
            summary = (await self.http.get("/api/v1/deliveries/summary")).json()
            return summary["pending"] == summary["refunds"]["pending"] == 0

        await eventually(acked, what="every announcement acked")
        return [r.text for r in self.sink.played]


@pytest.fixture
async def shop(stack, server_keys, tmp_path, unique) -> AsyncIterator[Shop]:
    broker, server, _ = stack
    merchant, device = f"RM{unique}", f"RD{unique}"
    sub_mchid, seller_id = f"18{int(unique, 16) % 10**8:08d}", f"2088{int(unique, 16) % 10**12:012d}"
    mer_id = f"777{int(unique, 16) % 10**12:012d}"
    registry = (
        "city_id,district_id,store_id,merchant_id,wechat_sub_mchid,alipay_seller_id,unionpay_mer_id,device_id,serial,model\n"
        f"BJ,WJ,S-WJ,{merchant},{sub_mchid},{seller_id},{mer_id},{device},SN{device},HD-S1\n"
    )
    async with AsyncExitStack() as exits:
        sinks = await _speakers(exits, broker, server_keys, tmp_path, [device])
        http = await exits.enter_async_context(await api_client(server))
        csv = {"content-type": "text/csv"}
        imported = await http.post(
            "/api/v1/registry/import", params={"dry_run": "false"}, content=registry, headers=csv
        )
        assert imported.json()["applied"] == 1, imported.text
        yield Shop(merchant, device, sub_mchid, seller_id, mer_id, http, sinks[device])


WX, ALI, BACKEND = "/api/v1/notifications/wechatpay", "/api/v1/notifications/alipay", "/api/v1/notifications/backend"
UNIONPAY = "/api/v1/notifications/unionpay"


async def test_partner_mode_payments_are_routed_by_the_merchants_platform_ids_and_unknown_ones_still_received(
    shop, stack, platform_keys, unique
):
    """As an aggregator is paid: WeChat Pay partner mode names the merchant by its sub_mchid (no
    attach, or attach as free text), Alipay by its seller_id; a merchant we do not know is still
    received (answered success, so the platform stops), recorded and listed UNKNOWN_MERCHANT; a
    notification for another service provider is refused and recorded."""
    http, database = shop.http, stack[2]
    shown = (await http.get("/api/v1/registry/merchants", params={"merchant_id": shop.merchant})).json()
    assert (shown[0]["wechat_sub_mchid"], shown[0]["alipay_seller_id"]) == (shop.sub_mchid, shop.seller_id)
    wechat = WechatPayPlatform(platform_keys["wechat"], serial=WECHAT_KEY_ID, apiv3_key=APIV3_KEY)
    alipay = AlipayPlatform(platform_keys["alipay"])

    async def send(path: str, notification: tuple[bytes, dict[str, str]]) -> list[int]:
        async def once() -> int:
            return (await http.post(path, content=notification[0], headers=notification[1])).status_code

        return await deliver_until_accepted(once, WECHATPAY_RETRY_S)

    paid, trade = f"4200000001{unique}", f"2026120122001{unique}"
    wx_paid = wechat.notification(transaction_id=paid, merchant_id=None, amount_fen=1250, sub_mchid=shop.sub_mchid)
    assert await send(WX, wx_paid) == [204]
    ali_paid = alipay.notification(trade_no=trade, merchant_id=None, amount_fen=300, seller_id=shop.seller_id)
    assert await send(ALI, ali_paid) == [200]
    await shop.heard(2)
    assert sorted(r.text for r in shop.sink.played) == ["微信收款十二点五元", "支付宝到账三元"]
    for payment in (f"wechat:{paid}", f"alipay:{trade}"):
        assert (await shop.payment(payment))["merchant_id"] == shop.merchant

    # A sub_mchid no merchant of ours holds: answered at the first try, recorded, not announced.
    lost = f"4200000002{unique}"
    assert await send(
        WX, wechat.notification(transaction_id=lost, merchant_id=None, amount_fen=8, sub_mchid="1999999999")
    ) == [204]
    listed = (await http.get("/api/v1/payments/not-announced")).json()
    [entry] = [e for e in listed if e["payment_id"] == f"wechat:{lost}"]
    assert (entry["code"], entry["merchant_id"], entry["platform_merchant_id"]) == (
        "UNKNOWN_MERCHANT",
        None,
        "1999999999",
    )
    # For another service provider: refused, and kept with the reason.
    elsewhere = wechat.notification(
        transaction_id=f"4200000003{unique}",
        merchant_id=None,
        amount_fen=100,
        sub_mchid=shop.sub_mchid,
        sp_mchid="1888888888",
    )
    refused = await shop.post(WX, elsewhere, 400)
    assert refused.json()["message"].startswith("NOT_OUR_PROVIDER")
    with psycopg.connect(database) as conn:
        codes = [row[0] for row in conn.execute("SELECT code FROM rejected_notifications WHERE source = 'wechatpay'")]
    assert codes == ["NOT_OUR_PROVIDER"]
    assert await shop.all_acked() == ["微信收款十二点五元", "支付宝到账三元"]  # nothing else was announced


async def test_wechatpay_refunds_are_announced_once_each_and_an_abnormal_one_not_at_all(shop, platform_keys, unique):
    """Partner mode: a partial and the rest refunded, each its own record announced once as 退款
    with the amount it refunds; WeChat Pay's retry announces nothing again; REFUND.ABNORMAL is
    recorded, not announced; the payment reads REFUNDED with its refunds."""
    wechat = WechatPayPlatform(platform_keys["wechat"], serial=WECHAT_KEY_ID, apiv3_key=APIV3_KEY)
    trade, sub = f"4200000009{unique}", shop.sub_mchid

    def refund(n: int, fen: int, status: str = "SUCCESS") -> tuple[bytes, dict[str, str]]:
        return wechat.refund(
            transaction_id=trade,
            refund_id=f"503000000{n}{unique}",
            total_fen=10000,
            refund_fen=fen,
            status=status,
            sub_mchid=sub,
        )

    await shop.post(
        WX, wechat.notification(transaction_id=trade, merchant_id=None, amount_fen=10000, sub_mchid=sub), 204
    )
    await shop.heard(1)
    partial = refund(1, 3000)
    await shop.post(WX, partial, 204)
    await shop.heard(2)
    await shop.post(WX, partial, 204)  # WeChat Pay's retry of the same notification
    await shop.post(WX, refund(2, 1000, "ABNORMAL"), 204)
    await shop.post(WX, refund(3, 7000), 204)
    assert await shop.all_acked() == ["微信收款一百元", "退款三十元", "退款七十元"]
    # Refunds have their own delivery figures, apart from the payments'.
    summary = (await shop.http.get("/api/v1/deliveries/summary")).json()
    assert (summary["payments"], summary["delivered"]) == (1, 1)
    assert (summary["refunds"]["payments"], summary["refunds"]["delivered"]) == (2, 2)
    payment = await shop.payment(f"wechat:{trade}")
    assert (payment["status"], payment["refunded_fen"]) == ("REFUNDED", 10000)
    assert [(r["kind"], r["amount_fen"], r["status"]) for r in payment["refunds"]] == [
        ("refund", 3000, "SUCCESS"),
        ("none", 1000, "ABNORMAL"),
        ("refund", 7000, "SUCCESS"),
    ]


async def test_alipay_refunds_are_announced_by_what_each_adds_to_the_cumulative_refund_fee(shop, platform_keys, unique):
    """Alipay sends the trade's notification again with refund_fee the refunds so far: 20 yuan
    refunded, then all 50 (TRADE_CLOSED): announced as 退款二十元 and 退款三十元."""
    alipay = AlipayPlatform(platform_keys["alipay"])
    trade, seller = f"2026120122009{unique}", shop.seller_id

    def refund(out_biz_no: str, so_far: int) -> tuple[bytes, dict[str, str]]:
        return alipay.refund(
            trade_no=trade,
            out_biz_no=out_biz_no,
            total_fen=5000,
            refunded_fen=so_far,
            merchant_id=None,
            seller_id=seller,
        )

    await shop.post(ALI, alipay.notification(trade_no=trade, merchant_id=None, amount_fen=5000, seller_id=seller))
    await shop.heard(1)
    first = refund("RF1", 2000)
    await shop.post(ALI, first)
    await shop.heard(2)
    await shop.post(ALI, first)  # Alipay's retry
    await shop.post(ALI, refund("RF2", 5000))
    assert await shop.all_acked() == ["支付宝到账五十元", "退款二十元", "退款三十元"]
    payment = await shop.payment(f"alipay:{trade}")
    assert (payment["status"], payment["refunded_fen"]) == ("REFUNDED", 5000)


async def test_a_backend_refund_with_its_own_id_is_announced_once_not_taken_for_a_repeat(shop, stack, backend_key):
    backend = PaymentBackend(backend_key, stack[1].base_url, [shop.merchant])
    body, headers = backend.notification(amount_fen=1250, channel=Channel.WECHAT)
    paid = (await shop.post(BACKEND, (body, headers))).json()["payment_id"]
    await shop.heard(1)
    refund = backend.refund(json.loads(body), 500)
    assert not (await shop.post(BACKEND, refund)).json()["duplicate"]
    assert (await shop.post(BACKEND, refund)).json()["duplicate"]  # the backend's retry
    assert await shop.all_acked() == ["微信收款十二点五元", "退款五元"]
    payment = await shop.payment(paid)
    assert (payment["status"], payment["refunded_fen"]) == ("REFUNDED_PART", 500)
    assert [r["amount_fen"] for r in payment["refunds"]] == [500]


async def test_a_payment_paid_long_before_it_reaches_us_is_recorded_not_announced(
    shop, stack, backend_key, platform_keys, unique
):
    """The platform's time is what counts: a payment paid 10 minutes before it arrives (over the
    5-minute default) is answered success, recorded and listed STALE, never played; a fresh one
    plays."""
    backend = PaymentBackend(backend_key, stack[1].base_url, [shop.merchant])
    late = datetime.now(tz=UTC) - timedelta(minutes=10)
    stale = (
        await shop.post(BACKEND, backend.notification(amount_fen=4200, channel=Channel.ALIPAY, paid_at=late))
    ).json()
    wechat = WechatPayPlatform(platform_keys["wechat"], serial=WECHAT_KEY_ID, apiv3_key=APIV3_KEY)
    old = wechat.notification(
        transaction_id=f"4200000007{unique}", merchant_id=None, amount_fen=100, sub_mchid=shop.sub_mchid, now=late
    )
    # WeChat Pay's envelope is signed now (its retry); the transaction inside was paid long ago.
    await shop.post(WX, old, 401)  # a signature timestamp 10 minutes old is a replay: refused
    fresh = wechat.notification(
        transaction_id=f"4200000008{unique}", merchant_id=None, amount_fen=100, sub_mchid=shop.sub_mchid
    )
    await shop.post(WX, fresh, 204)
    assert await shop.all_acked() == ["微信收款一元"]
    listed = (await shop.http.get("/api/v1/payments/not-announced")).json()
    [entry] = [e for e in listed if e["payment_id"] == stale["payment_id"]]
    assert (entry["code"], entry["merchant_id"], entry["amount_fen"]) == ("STALE", shop.merchant, 4200)
    assert (await shop.payment(stale["payment_id"]))["deliveries"] == []


async def test_unionpay_back_notifications_are_verified_by_their_certificate_and_announced_once(
    shop, stack, unionpay_chain, unique
):
    """UnionPay (ACP 5.1.0): a consumption signed with UnionPay's (test) certificate, chained to
    the configured root and intermediate, plays 云闪付收款 on the merchant its merId names; its
    refund plays 退款; UnionPay's retry plays nothing again; a notification signed under another
    chain is refused and recorded."""
    unionpay = UnionPayPlatform(unionpay_chain)
    paid = f"78{int(unique, 16) % 10**18:018d}"
    consumption = unionpay.notification(query_id=paid, mer_id=shop.mer_id, amount_fen=2000)
    answer = await shop.post(UNIONPAY, consumption)
    assert answer.text == "ok"
    await shop.heard(1)
    await shop.post(UNIONPAY, consumption)  # UnionPay's retry
    refund = unionpay.notification(
        query_id=f"79{int(unique, 16) % 10**18:018d}",
        mer_id=shop.mer_id,
        amount_fen=500,
        txn_type="04",
        orig_query_id=paid,
    )
    await shop.post(UNIONPAY, refund)
    forged = UnionPayPlatform(UnionPayChain.generate()).notification(
        query_id=f"77{unique}", mer_id=shop.mer_id, amount_fen=9900
    )
    refused = await shop.post(UNIONPAY, forged, 401)
    assert refused.text.startswith("CERTIFICATE_UNTRUSTED")
    assert await shop.all_acked() == ["云闪付收款二十元", "退款五元"]
    payment = await shop.payment(f"unionpay:{paid}")
    assert (payment["merchant_id"], payment["status"], payment["refunded_fen"]) == (shop.merchant, "REFUNDED_PART", 500)
    with psycopg.connect(stack[2]) as conn:
        codes = [row[0] for row in conn.execute("SELECT code FROM rejected_notifications WHERE source = 'unionpay'")]
    assert codes == ["CERTIFICATE_UNTRUSTED"]
