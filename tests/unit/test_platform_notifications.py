"""Alipay and WeChat Pay notifications: our verification against the platforms' own SDKs.

Every case is a notification signed (and, for WeChat Pay, encrypted) in the test with keys
generated here, then tampered with or not. Our verifier must accept exactly what the SDK
accepts (`python-alipay-sdk`, `wechatpayv3`), and each case also states what both must say, so
two verifiers agreeing on a wrong answer still fail. The intended differences are tested apart:
Alipay's rule that empty values are not signed (the SDK signs them), and WeChat Pay's 5-minute
replay window (the SDK has none).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from alipay import AliPay
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wechatpayv3.core import Core

from firmware_protocols.messages import Announce, AnnounceKind, Channel
from payment_bridge.alipay import verify_alipay_notification
from payment_bridge.errors import NotificationRejected
from payment_bridge.keyring import PlatformKeys
from payment_bridge.notifications import PaymentNotice
from payment_bridge.wechatpay import REPLAY_WINDOW_S, verify_wechatpay_notification
from simulators.platforms import alipay_sign, wechatpay_headers, wechatpay_resource


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    """Test-only keys, made for this run: the platforms', an impostor's, and our app's."""
    return {"platform": _rsa(), "other": _rsa(), "app": _rsa()}


# -- Alipay ------------------------------------------------------------------------------------

ALIPAY_BASE = {
    "notify_time": "2026-11-21 12:00:03",
    "notify_type": "trade_status_sync",
    "notify_id": "ac05099524730693a8b330c5ecf72da9786",
    "app_id": "2021000000000001",
    "charset": "utf-8",
    "version": "1.0",
    "trade_no": "2026112122001400001000000001",
    "out_trade_no": "HD20261121000001",
    "trade_status": "TRADE_SUCCESS",
    "total_amount": "12.50",
    "receipt_amount": "12.50",
    "gmt_create": "2026-11-21 11:59:58",
    "gmt_payment": "2026-11-21 12:00:01",
    "seller_id": "2088000000000001",
    "subject": "好店 面馆 & 小吃=2+1",
    "passback_params": "M0001",
}


_alipay_signed = alipay_sign


@dataclass(frozen=True)
class AlipayCase:
    name: str
    make: Callable[[dict[str, rsa.RSAPrivateKey]], list[tuple[str, str]]]
    valid: bool


def _pairs(params: dict[str, str]) -> list[tuple[str, str]]:
    return list(params.items())


ALIPAY_CASES = [
    AlipayCase("valid", lambda k: _pairs(_alipay_signed(ALIPAY_BASE, k["platform"])), valid=True),
    AlipayCase(
        "valid, parameters in another order",
        lambda k: sorted(_pairs(_alipay_signed(ALIPAY_BASE, k["platform"])), reverse=True),
        valid=True,
    ),
    AlipayCase(
        "valid, TRADE_FINISHED",
        lambda k: _pairs(_alipay_signed({**ALIPAY_BASE, "trade_status": "TRADE_FINISHED"}, k["platform"])),
        valid=True,
    ),
    AlipayCase(
        "amount changed after signing",
        lambda k: _pairs({**_alipay_signed(ALIPAY_BASE, k["platform"]), "total_amount": "125.00"}),
        valid=False,
    ),
    AlipayCase(
        "merchant changed after signing",
        lambda k: _pairs({**_alipay_signed(ALIPAY_BASE, k["platform"]), "passback_params": "M0002"}),
        valid=False,
    ),
    AlipayCase(
        "a signed parameter missing",
        lambda k: [(n, v) for n, v in _alipay_signed(ALIPAY_BASE, k["platform"]).items() if n != "gmt_payment"],
        valid=False,
    ),
    AlipayCase(
        "a parameter added after signing",
        lambda k: [*_pairs(_alipay_signed(ALIPAY_BASE, k["platform"])), ("refund_fee", "1.00")],
        valid=False,
    ),
    AlipayCase("signed with another key", lambda k: _pairs(_alipay_signed(ALIPAY_BASE, k["other"])), valid=False),
    AlipayCase(
        "signature of another notification",
        lambda k: _pairs(
            {
                **ALIPAY_BASE,
                "sign_type": "RSA2",
                "sign": _alipay_signed({**ALIPAY_BASE, "trade_no": "2026112122001400001000000002"}, k["platform"])[
                    "sign"
                ],
            }
        ),
        valid=False,
    ),
    AlipayCase(
        "signature not base64",
        lambda k: _pairs({**_alipay_signed(ALIPAY_BASE, k["platform"]), "sign": "not*base64"}),
        valid=False,
    ),
    AlipayCase(
        "sign_type RSA (SHA1)",
        lambda k: _pairs({**_alipay_signed(ALIPAY_BASE, k["platform"]), "sign_type": "RSA"}),
        valid=False,
    ),
]


def _sdk_accepts_alipay(pairs: list[tuple[str, str]], keys: dict[str, rsa.RSAPrivateKey]) -> bool:
    sdk = AliPay(
        appid=ALIPAY_BASE["app_id"],
        app_private_key_string=_private_pem(keys["app"]),
        alipay_public_key_string=_public_pem(keys["platform"]),
        sign_type="RSA2",
    )
    data = dict(pairs)
    signature = data.pop("sign", "")
    try:
        return bool(sdk.verify(data, signature))
    except Exception:  # noqa: BLE001 - the SDK raises for what it refuses (an unknown sign type, bad base64).
        return False


def _we_accept_alipay(pairs: list[tuple[str, str]], keys: dict[str, rsa.RSAPrivateKey]) -> bool:
    try:
        verify_alipay_notification(urlencode(pairs).encode(), [keys["platform"].public_key()])
    except NotificationRejected:
        return False
    return True


@pytest.mark.parametrize("case", ALIPAY_CASES, ids=lambda c: c.name)
def test_alipay_we_accept_exactly_what_the_sdk_accepts(case, keys):
    pairs = case.make(keys)
    assert _sdk_accepts_alipay(pairs, keys) is case.valid
    assert _we_accept_alipay(pairs, keys) is case.valid


def test_alipay_notice_carries_the_trade_the_merchant_and_the_amount(keys):
    notice = verify_alipay_notification(
        urlencode(_alipay_signed(ALIPAY_BASE, keys["platform"])).encode(), [keys["platform"].public_key()]
    )
    assert (notice.payment_id, notice.merchant_id, notice.amount_fen) == (
        "alipay:2026112122001400001000000001",
        "M0001",
        1250,
    )
    assert (notice.channel, notice.kind, notice.notify_id) == (
        Channel.ALIPAY,
        AnnounceKind.PAYMENT,
        ALIPAY_BASE["notify_id"],
    )
    assert notice.paid_at == dt.datetime(2026, 11, 21, 4, 0, 1, tzinfo=dt.UTC)


def test_alipay_wait_buyer_pay_is_recorded_but_not_announced(keys):
    params = {k: v for k, v in ALIPAY_BASE.items() if k != "gmt_payment"} | {"trade_status": "WAIT_BUYER_PAY"}
    notice = verify_alipay_notification(
        urlencode(_alipay_signed(params, keys["platform"])).encode(), [keys["platform"].public_key()]
    )
    assert notice.kind is None


def test_alipay_empty_values_are_not_signed_which_the_sdk_gets_wrong(keys):
    # Alipay leaves empty parameters out of what it signs; the SDK puts them in ("body="), so it
    # refuses a genuine notification that has one. This is the one intended Alipay difference.
    params = {**ALIPAY_BASE, "body": ""}
    pairs = _pairs(_alipay_signed(params, keys["platform"]))
    assert _we_accept_alipay(pairs, keys)
    assert not _sdk_accepts_alipay(pairs, keys)


def test_alipay_any_of_the_configured_keys_verifies_during_a_rotation(keys, tmp_path):
    key_file = tmp_path / "alipay.pem"
    key_file.write_text(_public_pem(keys["platform"]))
    ring = PlatformKeys(alipay_public_key_file=key_file, check_interval_s=0)
    signed_by_next = urlencode(_alipay_signed(ALIPAY_BASE, keys["other"])).encode()
    with pytest.raises(NotificationRejected):
        verify_alipay_notification(signed_by_next, ring.alipay())
    # The next key is added beside the current one, without a restart ...
    key_file.write_text(_public_pem(keys["platform"]) + _public_pem(keys["other"]))
    assert verify_alipay_notification(signed_by_next, ring.alipay()).merchant_id == "M0001"
    # ... and a broken file keeps the keys in force.
    key_file.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    assert len(ring.alipay()) == 2


# -- WeChat Pay --------------------------------------------------------------------------------

APIV3_KEY = "0123456789abcdef0123456789ABCDEF"  # test-only
PUBLIC_KEY_ID = "PUB_KEY_ID_0111200000000000000000000000000001"
TRANSACTION = {
    "mchid": "1900000001",
    "appid": "wx0000000000000001",
    "out_trade_no": "HD20261121000002",
    "transaction_id": "4200000000202611210000000001",
    "trade_type": "NATIVE",
    "trade_state": "SUCCESS",
    "trade_state_desc": "支付成功",
    "bank_type": "OTHERS",
    "attach": "M0001",
    "success_time": "2026-11-21T12:00:01+08:00",
    "payer": {"openid": "o0000000000000000000000001"},
    "amount": {"total": 1250, "payer_total": 1250, "currency": "CNY", "payer_currency": "CNY"},
}

# Partner (服务商) mode, with the fields of WeChat Pay's documented example: the merchant is
# `sub_mchid`, `sp_mchid` is us; `attach` is free text (its docs show 自定义数据).
PARTNER_TRANSACTION = {
    "sp_appid": "wx8888888888888888",
    "sp_mchid": "1230000109",
    "sub_appid": "wxd678efh567hg6999",
    "sub_mchid": "1900000109",
    "out_trade_no": "1217752501201407033233368018",
    "transaction_id": "1217752501201407033233368018",
    "trade_type": "MICROPAY",
    "trade_state": "SUCCESS",
    "trade_state_desc": "支付成功",
    "bank_type": "CMC",
    "attach": "自定义数据",
    "success_time": "2018-06-08T10:34:56+08:00",
    "payer": {"sp_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "sub_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"},
}
PARTNER_NO_ATTACH = {k: v for k, v in PARTNER_TRANSACTION.items() if k != "attach"}
DIRECT_NO_ATTACH = {k: v for k, v in TRANSACTION.items() if k != "attach"}


def _certificate(key: rsa.RSAPrivateKey, serial: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (test only)")])
    now = dt.datetime.now(tz=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


SERIAL = 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1


@dataclass(frozen=True)
class Signed:
    headers: dict[str, str]
    body: str


def _encrypt(plaintext: dict, *, nonce: str = "fdasflkja484", aad: str = "transaction") -> dict[str, str]:
    return wechatpay_resource(json.dumps(plaintext).encode(), APIV3_KEY.encode(), nonce=nonce, associated_data=aad)


def _envelope(resource: dict[str, str], **over: object) -> dict[str, object]:
    return {
        "id": "EV-2018022511223320873",
        "create_time": "2026-11-21T12:00:03+08:00",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": resource,
        **over,
    }


def _wechat_signed(
    body: str, key: rsa.RSAPrivateKey, *, serial: str = f"{SERIAL:X}", timestamp: int | None = None, nonce: str = "N1"
) -> Signed:
    ts = int(dt.datetime.now(tz=dt.UTC).timestamp()) if timestamp is None else timestamp
    return Signed(wechatpay_headers(body.encode(), key, serial=serial, timestamp=ts, nonce=nonce), body)


def _tamper_ciphertext(resource: dict[str, str]) -> dict[str, str]:
    raw = bytearray(base64.b64decode(resource["ciphertext"]))
    raw[-1] ^= 0x01  # the last byte belongs to the GCM tag
    return {**resource, "ciphertext": base64.b64encode(bytes(raw)).decode()}


@dataclass(frozen=True)
class WechatCase:
    name: str
    make: Callable[[dict[str, rsa.RSAPrivateKey]], Signed]
    valid: bool


def _body(resource: dict[str, str] | None = None, **over: object) -> str:
    return json.dumps(_envelope(resource or _encrypt(TRANSACTION), **over), ensure_ascii=False)


def _replace_header(signed: Signed, name: str, value: str) -> Signed:
    return Signed({**signed.headers, name: value}, signed.body)


def _signed_transaction(transaction: dict[str, object]) -> Callable[[dict[str, rsa.RSAPrivateKey]], Signed]:
    return lambda k: _wechat_signed(_body(_encrypt(transaction)), k["platform"])


WECHAT_CASES = [
    WechatCase("valid, platform certificate", lambda k: _wechat_signed(_body(), k["platform"]), valid=True),
    *(
        WechatCase(f"valid, {name}", _signed_transaction(transaction), valid=True)
        for name, transaction in (
            ("partner mode as documented (attach 自定义数据)", PARTNER_TRANSACTION),
            ("partner mode without attach", PARTNER_NO_ATTACH),
            ("direct mode without attach", DIRECT_NO_ATTACH),
        )
    ),
    WechatCase(
        "valid, platform public key id",
        lambda k: _wechat_signed(_body(), k["platform"], serial=PUBLIC_KEY_ID),
        valid=True,
    ),
    WechatCase(
        "valid, serial in lower case",
        lambda k: _wechat_signed(_body(), k["platform"], serial=f"{SERIAL:x}"),
        valid=True,
    ),
    WechatCase(
        "valid, body keys in another order",
        lambda k: _wechat_signed(json.dumps(dict(reversed(_envelope(_encrypt(TRANSACTION)).items()))), k["platform"]),
        valid=True,
    ),
    WechatCase(
        "amount changed after signing",
        lambda k: Signed(
            _wechat_signed(_body(), k["platform"]).headers,
            _body(_encrypt({**TRANSACTION, "amount": {**TRANSACTION["amount"], "total": 125000}})),
        ),
        valid=False,
    ),
    WechatCase(
        "body field changed after signing",
        lambda k: Signed(_wechat_signed(_body(), k["platform"]).headers, _body(event_type="TRANSACTION.SUCCES5")),
        valid=False,
    ),
    WechatCase("signed with another key", lambda k: _wechat_signed(_body(), k["other"]), valid=False),
    WechatCase(
        "unknown serial",
        lambda k: _wechat_signed(_body(), k["platform"], serial="5157F09EFDC096DE15EBE81A47057A7232F1B8E2"),
        valid=False,
    ),
    WechatCase(
        "certificate serial, but signed by the public-key-id key's impostor",
        lambda k: _wechat_signed(_body(), k["other"], serial=PUBLIC_KEY_ID),
        valid=False,
    ),
    WechatCase(
        "nonce header changed after signing",
        lambda k: _replace_header(_wechat_signed(_body(), k["platform"]), "Wechatpay-Nonce", "N2"),
        valid=False,
    ),
    WechatCase(
        "bad GCM tag (re-signed)",
        lambda k: _wechat_signed(_body(_tamper_ciphertext(_encrypt(TRANSACTION))), k["platform"]),
        valid=False,
    ),
    WechatCase(
        "wrong GCM nonce (re-signed)",
        lambda k: _wechat_signed(_body({**_encrypt(TRANSACTION), "nonce": "fdasflkja485"}), k["platform"]),
        valid=False,
    ),
    WechatCase(
        "wrong associated data (re-signed)",
        lambda k: _wechat_signed(_body({**_encrypt(TRANSACTION), "associated_data": "refund"}), k["platform"]),
        valid=False,
    ),
    WechatCase(
        "encrypted with another APIv3 key (re-signed)",
        lambda k: _wechat_signed(
            _body(
                {
                    **_encrypt(TRANSACTION),
                    "ciphertext": base64.b64encode(
                        AESGCM(b"x" * 32).encrypt(b"fdasflkja484", json.dumps(TRANSACTION).encode(), b"transaction")
                    ).decode(),
                }
            ),
            k["platform"],
        ),
        valid=False,
    ),
    WechatCase(
        "signature missing",
        lambda k: _replace_header(_wechat_signed(_body(), k["platform"]), "Wechatpay-Signature", ""),
        valid=False,
    ),
]


@pytest.fixture(scope="module")
def wechat_sdk(keys, tmp_path_factory) -> Callable[[str | None], Core]:
    """The SDK configured with our test platform certificate, or with the platform public key."""
    cert_dir = tmp_path_factory.mktemp("wechatpay-certs")
    certificate = _certificate(keys["platform"], SERIAL)
    (cert_dir / f"{SERIAL:X}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    merchant = _private_pem(keys["app"])

    def make(public_key_id: str | None) -> Core:
        if public_key_id is None:
            core = Core("1900000001", "M-SERIAL", merchant, APIV3_KEY, cert_dir=str(cert_dir))
        else:
            core = Core(
                "1900000001",
                "M-SERIAL",
                merchant,
                APIV3_KEY,
                public_key=_public_pem(keys["platform"]),
                public_key_id=public_key_id,
            )
        # The SDK downloads certificates for a serial it does not know; there is no network
        # here, and an unknown serial must simply fail.
        core._update_certificates = lambda: None
        return core

    return make


@pytest.fixture(scope="module")
def platform_keys(keys, tmp_path_factory) -> PlatformKeys:
    folder = tmp_path_factory.mktemp("wechatpay-keys")
    (folder / "platform.pem").write_bytes(
        _certificate(keys["platform"], SERIAL).public_bytes(serialization.Encoding.PEM)
    )
    (folder / f"{PUBLIC_KEY_ID}.pem").write_text(_public_pem(keys["platform"]))
    apiv3 = folder.parent / f"{folder.name}-apiv3.key"
    apiv3.write_text(APIV3_KEY)
    return PlatformKeys(wechatpay_keys_dir=folder, wechatpay_apiv3_key_file=apiv3)


def _sdk_accepts_wechat(signed: Signed, sdk: Callable[[str | None], Core]) -> bool:
    core = sdk(PUBLIC_KEY_ID if signed.headers["Wechatpay-Serial"] == PUBLIC_KEY_ID else None)
    try:
        return core.callback(signed.headers, signed.body) is not None
    except Exception:  # noqa: BLE001 - the SDK raises for some of what it refuses.
        return False


def _we_accept_wechat(signed: Signed, ring: PlatformKeys, *, now: dt.datetime | None = None) -> bool:
    try:
        verify_wechatpay_notification(
            signed.body.encode(),
            {name.lower(): value for name, value in signed.headers.items()},
            platform_key=ring.wechatpay,
            apiv3_key=ring.apiv3_key(),
            now=now or dt.datetime.now(tz=dt.UTC),
        )
    except NotificationRejected:
        return False
    return True


@pytest.mark.parametrize("case", WECHAT_CASES, ids=lambda c: c.name)
def test_wechatpay_we_accept_exactly_what_the_sdk_accepts(case, keys, wechat_sdk, platform_keys):
    signed = case.make(keys)
    assert _sdk_accepts_wechat(signed, wechat_sdk) is case.valid
    assert _we_accept_wechat(signed, platform_keys) is case.valid


def test_wechatpay_stale_timestamp_is_refused_by_us_though_the_sdk_takes_it(keys, wechat_sdk, platform_keys):
    # The one intended WeChat Pay difference: a notification replayed after the 5-minute window.
    now = dt.datetime.now(tz=dt.UTC)
    stale = _wechat_signed(_body(), keys["platform"], timestamp=int(now.timestamp()) - REPLAY_WINDOW_S - 60)
    assert _sdk_accepts_wechat(stale, wechat_sdk)
    assert not _we_accept_wechat(stale, platform_keys, now=now)
    fresh = _wechat_signed(_body(), keys["platform"], timestamp=int(now.timestamp()) - REPLAY_WINDOW_S + 5)
    assert _we_accept_wechat(fresh, platform_keys, now=now)


def test_wechatpay_notice_carries_the_transaction(keys, platform_keys):
    signed = _wechat_signed(_body(), keys["platform"])
    notice = verify_wechatpay_notification(
        signed.body.encode(),
        {n.lower(): v for n, v in signed.headers.items()},
        platform_key=platform_keys.wechatpay,
        apiv3_key=platform_keys.apiv3_key(),
        now=dt.datetime.now(tz=dt.UTC),
    )
    assert (notice.payment_id, notice.merchant_id, notice.amount_fen, notice.kind) == (
        "wechat:4200000000202611210000000001",
        "M0001",
        1250,
        AnnounceKind.PAYMENT,
    )
    assert notice.notify_id == "EV-2018022511223320873"


def test_wechatpay_new_platform_key_is_used_without_a_restart(keys, tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    apiv3 = tmp_path / "apiv3.key"
    apiv3.write_text(APIV3_KEY)
    ring = PlatformKeys(wechatpay_keys_dir=folder, wechatpay_apiv3_key_file=apiv3, check_interval_s=0)
    new_serial = SERIAL + 1
    signed = _wechat_signed(_body(), keys["other"], serial=f"{new_serial:X}")
    assert not _we_accept_wechat(signed, ring)
    staged = folder / "next.pem.tmp"
    staged.write_bytes(_certificate(keys["other"], new_serial).public_bytes(serialization.Encoding.PEM))
    staged.replace(folder / "next.pem")  # written, then renamed into place, as deployment tools do
    assert _we_accept_wechat(signed, ring)
    (folder / "next.pem").unlink()
    assert not _we_accept_wechat(signed, ring)


def test_wechatpay_without_an_apiv3_key_refuses_with_a_clear_code(keys, platform_keys):
    signed = _wechat_signed(_body(), keys["platform"])
    with pytest.raises(NotificationRejected) as caught:
        verify_wechatpay_notification(
            signed.body.encode(),
            {n.lower(): v for n, v in signed.headers.items()},
            platform_key=platform_keys.wechatpay,
            apiv3_key=None,
            now=dt.datetime.now(tz=dt.UTC),
        )
    assert (caught.value.status, caught.value.code) == (503, "KEY_NOT_CONFIGURED")


def _notice(signed: Signed, ring: PlatformKeys, *, ours: frozenset[str] = frozenset()) -> PaymentNotice:
    return verify_wechatpay_notification(
        signed.body.encode(),
        {n.lower(): v for n, v in signed.headers.items()},
        platform_key=ring.wechatpay,
        apiv3_key=ring.apiv3_key(),
        now=dt.datetime.now(tz=dt.UTC),
        ours=ours,
    )


@pytest.mark.parametrize(
    ("transaction", "merchant", "sub_mchid"),
    [
        (PARTNER_TRANSACTION, None, "1900000109"),  # attach is free text, not a merchant id of ours
        (PARTNER_NO_ATTACH, None, "1900000109"),
        ({**PARTNER_TRANSACTION, "attach": "M0001"}, "M0001", "1900000109"),
        (DIRECT_NO_ATTACH, None, None),
    ],
    ids=["partner, attach 自定义数据", "partner, no attach", "partner, attach ours", "direct, no attach"],
)
def test_wechatpay_partner_mode_names_the_merchant_by_sub_mchid_as_the_sdk_decrypts_it(
    transaction, merchant, sub_mchid, keys, wechat_sdk, platform_keys
):
    signed = _wechat_signed(_body(_encrypt(transaction)), keys["platform"])
    notice = _notice(signed, platform_keys)
    assert (notice.merchant_id, notice.platform_merchant_id, notice.amount_fen) == (
        merchant,
        sub_mchid,
        transaction["amount"]["total"],
    )
    # The SDK decrypts the same resource to the same merchant and payment.
    resource = wechat_sdk(None).callback(signed.headers, signed.body)["resource"]
    assert (resource.get("sub_mchid"), f"wechat:{resource['transaction_id']}") == (sub_mchid, notice.payment_id)


def test_wechatpay_a_notification_for_another_service_provider_is_refused(keys, platform_keys):
    partner = _wechat_signed(_body(_encrypt(PARTNER_TRANSACTION)), keys["platform"])
    assert _notice(partner, platform_keys, ours=frozenset({"1230000109"})).platform_merchant_id == "1900000109"
    with pytest.raises(NotificationRejected, match="sp_mchid '1230000109' is not one of ours") as caught:
        _notice(partner, platform_keys, ours=frozenset({"1900000001"}))
    assert caught.value.code == "NOT_OUR_PROVIDER"
    direct = _wechat_signed(_body(), keys["platform"])
    assert _notice(direct, platform_keys, ours=frozenset({"1900000001"})).merchant_id == "M0001"
    with pytest.raises(NotificationRejected, match="mchid '1900000001' is not one of ours"):
        _notice(direct, platform_keys, ours=frozenset({"1230000109"}))


@pytest.mark.parametrize(
    "transaction",
    [
        {k: v for k, v in PARTNER_TRANSACTION.items() if k != "sub_mchid"},
        {**PARTNER_TRANSACTION, "mchid": "1900000001"},
        {k: v for k, v in TRANSACTION.items() if k != "mchid"},
    ],
    ids=["sp_mchid without sub_mchid", "both modes", "no mode"],
)
def test_wechatpay_a_transaction_names_one_mode(transaction, keys, platform_keys):
    signed = _wechat_signed(_body(_encrypt(transaction)), keys["platform"])
    with pytest.raises(NotificationRejected) as caught:
        _notice(signed, platform_keys)
    assert caught.value.code == "NOTIFICATION_INVALID"


def test_alipay_routes_by_seller_id_without_passback_params_and_checks_app_id(keys):
    public = [keys["platform"].public_key()]
    base = {
        "notify_id": "ac05099524730693a8b330c5ecf72da9786",
        "notify_time": "2026-11-21 12:00:02",
        "notify_type": "trade_status_sync",
        "app_id": "2014072300007148",
        "charset": "utf-8",
        "version": "1.0",
        "trade_no": "2026112122001434581000000001",
        "out_trade_no": "HD20261121000001",
        "seller_id": "2088101106499364",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "12.50",
        "gmt_payment": "2026-11-21 12:00:01",
    }
    body = urlencode(alipay_sign(base, keys["platform"])).encode()
    notice = verify_alipay_notification(body, public, ours=frozenset({"2014072300007148"}))
    assert (notice.merchant_id, notice.platform_merchant_id) == (None, "2088101106499364")
    with pytest.raises(NotificationRejected) as caught:
        verify_alipay_notification(body, public, ours=frozenset({"2021000000000001"}))
    assert caught.value.code == "NOT_OUR_PROVIDER"
    neither = {k: v for k, v in base.items() if k != "seller_id"}
    with pytest.raises(NotificationRejected, match="passback_params and seller_id"):
        verify_alipay_notification(urlencode(alipay_sign(neither, keys["platform"])).encode(), public)


# A refund notification's resource, with the fields of WeChat Pay's documented example.
REFUND = {
    "mchid": "1900000001",
    "out_trade_no": "1217752501201407033233368018",
    "transaction_id": "1217752501201407033233368018",
    "out_refund_no": "1217752501201407033233368018",
    "refund_id": "1217752501201407033233368018",
    "refund_status": "SUCCESS",
    "success_time": "2018-06-08T10:34:56+08:00",
    "user_received_account": "招商银行信用卡0403",
    "amount": {"total": 999, "refund": 888, "payer_total": 999, "payer_refund": 888},
}


@pytest.mark.parametrize(
    ("event", "status", "kind"),
    [("REFUND.SUCCESS", "SUCCESS", AnnounceKind.REFUND), ("REFUND.ABNORMAL", "ABNORMAL", None)],
)
def test_wechatpay_refund_is_its_own_record_of_the_payment(event, status, kind, keys, wechat_sdk, platform_keys):
    resource = {**REFUND, "refund_status": status}
    signed = _wechat_signed(_body(_encrypt(resource, aad="refund"), event_type=event), keys["platform"])
    notice = _notice(signed, platform_keys)
    assert (notice.payment_id, notice.refund_of, notice.amount_fen, notice.kind, notice.status) == (
        "wechat-refund:1217752501201407033233368018",
        "wechat:1217752501201407033233368018",
        888,
        kind,
        status,
    )
    # The SDK verifies and decrypts the same notification to the same refund.
    decrypted = wechat_sdk(None).callback(signed.headers, signed.body)["resource"]
    assert (decrypted["refund_id"], decrypted["amount"]["refund"]) == ("1217752501201407033233368018", 888)


def test_alipay_refund_is_the_trade_again_with_its_cumulative_refund_fee(keys):
    params = {
        "notify_id": "ac05099524730693a8b330c5ecf72da9787",
        "notify_time": "2026-11-21 15:00:02",
        "app_id": "2014072300007148",
        "charset": "utf-8",
        "trade_no": "2026112122001434581000000001",
        "out_trade_no": "HD20261121000001",
        "out_biz_no": "HZRF001",
        "seller_id": "2088101106499364",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "50.00",
        "refund_fee": "20.00",
        "gmt_payment": "2026-11-21 12:00:01",
        "gmt_refund": "2026-11-21 15:00:01",
    }
    notice = verify_alipay_notification(
        urlencode(alipay_sign(params, keys["platform"])).encode(), [keys["platform"].public_key()]
    )
    assert (notice.payment_id, notice.refund_of, notice.refund_total_fen, notice.kind) == (
        "alipay-refund:2026112122001434581000000001:HZRF001",
        "alipay:2026112122001434581000000001",
        2000,
        AnnounceKind.REFUND,
    )
    assert notice.paid_at == dt.datetime(2026, 11, 21, 15, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    without = {k: v for k, v in params.items() if k != "out_biz_no"}
    with pytest.raises(NotificationRejected, match="out_biz_no"):
        verify_alipay_notification(
            urlencode(alipay_sign(without, keys["platform"])).encode(), [keys["platform"].public_key()]
        )


# -- a random corpus: our verifiers and the SDKs agree on every signature verdict ---------------

_SIGNATURE_CODES = frozenset(
    {"SIGNATURE_INVALID", "SIGNATURE_MISSING", "SIGN_TYPE_UNSUPPORTED", "SERIAL_UNKNOWN", "DECRYPT_FAILED"}
)
_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=16).filter(
    lambda n: n not in ("sign", "sign_type", "charset")
)
# Values as platforms send them: any printable text, never empty (Alipay leaves empty values out
# of what it signs and the SDK does not: the one intended difference, tested above).
_VALUES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=24)


def _agree(sdk_accepts: bool, verify: Callable[[], object]) -> bool:
    """Whether our verifier agrees with the SDK's signature verdict: what the SDK refuses we
    refuse (for the signature, or earlier: a charset we do not read); what it accepts we do not
    refuse for its signature (we may still refuse its content, which the SDK does not read)."""
    try:
        verify()
    except NotificationRejected as exc:
        return not sdk_accepts or exc.code not in _SIGNATURE_CODES
    return sdk_accepts


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    extra=st.dictionaries(_NAMES, _VALUES, max_size=6),
    mutation=st.sampled_from(["none", "change", "drop", "add", "signature"]),
    data=st.data(),
)
def test_alipay_random_corpus_we_and_the_sdk_agree(extra, mutation, data, keys):
    params = alipay_sign({**ALIPAY_BASE, **extra}, keys["platform"])
    signed = [n for n in params if n not in ("sign", "sign_type")]
    if mutation == "change":
        name = data.draw(st.sampled_from(signed))
        params[name] = data.draw(_VALUES.filter(lambda v, old=params[name]: v != old))
    elif mutation == "drop":
        del params[data.draw(st.sampled_from(signed))]
    elif mutation == "add":
        params[data.draw(_NAMES.filter(lambda n: n not in params))] = data.draw(_VALUES)
    elif mutation == "signature":
        raw = bytearray(base64.b64decode(params["sign"]))
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        params["sign"] = base64.b64encode(bytes(raw)).decode()
    pairs = list(params.items())
    sdk = _sdk_accepts_alipay(pairs, keys)
    public = [keys["platform"].public_key()]
    assert _agree(sdk, lambda: verify_alipay_notification(urlencode(pairs).encode(), public)), (mutation, pairs)
    assert sdk is (mutation == "none"), (mutation, pairs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    extra=st.dictionaries(_NAMES, _VALUES, max_size=4),
    mutation=st.sampled_from(["none", "body", "nonce", "timestamp", "signature"]),
    data=st.data(),
)
def test_wechatpay_random_corpus_we_and_the_sdk_agree(extra, mutation, data, keys, wechat_sdk, platform_keys):
    transaction = {**data.draw(st.sampled_from([TRANSACTION, PARTNER_TRANSACTION])), **extra}
    signed = _wechat_signed(_body(_encrypt(transaction)), keys["platform"])
    headers, body = dict(signed.headers), signed.body
    if mutation == "body":
        at = data.draw(st.integers(0, len(body) - 1))
        body = body[:at] + data.draw(st.sampled_from([" ", "x", "\n", "}"])) + body[at:]
    elif mutation == "nonce":
        headers["Wechatpay-Nonce"] += data.draw(st.sampled_from(["1", "a", " "]))
    elif mutation == "timestamp":
        headers["Wechatpay-Timestamp"] = str(int(headers["Wechatpay-Timestamp"]) - data.draw(st.integers(1, 200)))
    elif mutation == "signature":
        raw = bytearray(base64.b64decode(headers["Wechatpay-Signature"]))
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        headers["Wechatpay-Signature"] = base64.b64encode(bytes(raw)).decode()
    case = Signed(headers, body)
    sdk = _sdk_accepts_wechat(case, wechat_sdk)
    assert _agree(sdk, lambda: _notice(case, platform_keys)), (mutation, headers, body)
    assert sdk is (mutation == "none")


def test_a_refund_request_number_as_long_as_alipay_allows_still_makes_a_payment_id_devices_take(keys):
    # out_biz_no may be 64 characters: with the trade number that is past a payment id's 64,
    # which the devices' announce refuses; the id becomes a digest, the same for every retry.
    params = {
        **ALIPAY_BASE,
        "out_biz_no": "R" * 64,
        "refund_fee": "1.00",
        "gmt_refund": "2026-11-21 15:00:01",
    }
    body = urlencode(alipay_sign(params, keys["platform"])).encode()
    first = verify_alipay_notification(body, [keys["platform"].public_key()])
    again = verify_alipay_notification(body, [keys["platform"].public_key()])
    assert first.payment_id == again.payment_id
    assert first.payment_id.startswith("alipay-refund:")
    assert len(first.payment_id) <= 64
    Announce(
        device_id="SPK1",
        ts=1,
        payment_id=first.payment_id,
        amount_fen=100,
        channel=Channel.ALIPAY,
        kind=AnnounceKind.REFUND,
        paid_at=1,
        issued_at=1,
        ttl_s=60,
        key_id="k",
    )  # valid for the device's own model
