"""Device identity and broker access control, on the embedded amqtt broker with the real
authority (PostgreSQL) and on a private Mosquitto with the generated configuration; TLS with a
CA made for the test; every forbidden case tried."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import httpx
import psycopg
import pytest

from firmware_protocols.credentials import encode_secret, mqtt_password
from fleet_server.auth.roles import Role
from fleet_server.contacts.cipher import FieldCipher, FieldKeys
from fleet_server.contacts.contacts import Contacts
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.identity.access import server_client_id
from fleet_server.identity.certs import CertificateAuthority
from fleet_server.identity.mosquitto import MosquittoTls, write_config
from fleet_server.identity.store import BrokerAuthority, DeviceCredentials
from haodian.embedded import BrokerTls, EmbeddedBroker
from haodian.server import SERVER_ACCOUNT, Part, ServerStack, start_embedded_broker
from haodian.settings import Settings
from mqtt_link.link import Delivery
from simulators import mosquitto
from tests.integration.conftest import api_client, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SERVER_PASSWORD = "test-only-server-password"  # noqa: S105 - made for this test's broker only


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory) -> tuple[CertificateAuthority, Path]:
    """A CA made for this test run, with a server certificate for 127.0.0.1 (test-only keys)."""
    folder = tmp_path_factory.mktemp("ca")
    ca = CertificateAuthority.create("Haodian test CA")
    ca.write(folder)
    ca.issue_server("127.0.0.1", ["127.0.0.1", "localhost"]).write(folder / "server.pem", folder / "server.key")
    return ca, folder


@contextlib.asynccontextmanager
async def secured_broker(database_url: str, master_key: bytes, **tls: object) -> AsyncIterator[tuple]:
    async with open_pool(database_url, max_size=4) as pool:
        await migrate(pool)
        credentials = DeviceCredentials(pool, master_key)
        authority = BrokerAuthority(credentials, {SERVER_ACCOUNT: SERVER_PASSWORD}, max_skew_s=60)
        async with EmbeddedBroker(authority=authority, **tls) as broker:  # type: ignore[arg-type]
            yield broker, credentials


async def connects(port: int, username: str | None, password: str | None, client_id: str, **kw: object) -> bool:
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=username, password=password, identifier=client_id, **kw):
            return True
    except aiomqtt.MqttError:
        return False


def device_client(port: int, device_id: str, secret: bytes, **kw: object) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=device_id,
        password=mqtt_password(secret, device_id, time.time()),
        identifier=device_id,
        **kw,
    )


async def received(client: aiomqtt.Client, within_s: float) -> list[str]:
    got: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                got.append(str(message.topic))  # noqa: PERF401 - what came before the timeout must be kept.
    return got


async def test_only_provisioned_devices_with_a_fresh_signed_password_connect(machine_database, server_keys, unique):
    device, other = f"ID{unique}", f"IE{unique}"
    async with secured_broker(machine_database, server_keys.device_master_key) as (broker, credentials):
        issued = await credentials.provision(device, by="test")
        secret = issued.secret
        now = time.time()
        port = broker.port
        assert await connects(port, device, mqtt_password(secret, device, now), device)
        # Tried and refused: no password, wrong secret, too old, from the future, another
        # device's id as username, a client id that is not its own, never provisioned, no
        # credentials at all, a server account with a wrong password.
        assert not await connects(port, device, None, device)
        assert not await connects(port, device, mqtt_password(b"x" * 32, device, now), device)
        assert not await connects(port, device, mqtt_password(secret, device, now - 3600), device)
        assert not await connects(port, device, mqtt_password(secret, device, now + 3600), device)
        assert not await connects(port, other, mqtt_password(secret, device, now), other)
        assert not await connects(port, device, mqtt_password(secret, device, now), other)
        # Not even a server's client id built on its own name (a device named like the prefix).
        assert not await connects(port, device, mqtt_password(secret, device, now), server_client_id(device, "ingest"))
        assert not await connects(port, other, mqtt_password(secret, other, now), other)
        assert not await connects(port, None, None, f"anon{unique}")
        assert not await connects(port, SERVER_ACCOUNT, "wrong", f"srv{unique}")
        assert await connects(port, SERVER_ACCOUNT, SERVER_PASSWORD, f"srv{unique}")
        # Provisioning is once; rotating retires the old secret at the next connect.
        with pytest.raises(Exception, match="already has credentials"):
            await credentials.provision(device, by="test")
        rotated = await credentials.provision(device, by="test", rotate=True)
        assert rotated.generation == 2
        assert not await connects(port, device, mqtt_password(secret, device, time.time()), device)
        assert await connects(port, device, mqtt_password(rotated.secret, device, time.time()), device)
        # Revocation: refused from the next connect on.
        await credentials.revoke(device, by="test")
        assert not await connects(port, device, mqtt_password(rotated.secret, device, time.time()), device)


async def test_a_device_reaches_only_its_own_topics_on_the_embedded_broker(machine_database, server_keys, unique):
    me, victim = f"AC{unique}", f"AV{unique}"
    async with secured_broker(machine_database, server_keys.device_master_key) as (broker, credentials):
        mine = (await credentials.provision(me, by="test")).secret
        theirs = (await credentials.provision(victim, by="test")).secret
        async with (
            aiomqtt.Client(
                "127.0.0.1", broker.port, username=SERVER_ACCOUNT, password=SERVER_PASSWORD, identifier=f"s{unique}"
            ) as server,
            device_client(broker.port, me, mine) as attacker,
            device_client(broker.port, victim, theirs) as target,
        ):
            await server.subscribe("hd/v1/+/up/#", qos=1)
            await target.subscribe(f"hd/v1/{victim}/down/#", qos=1)
            # Subscriptions outside its own down/ are refused (SUBACK failure code 0x80).
            for topic_filter in (
                f"hd/v1/{victim}/down/#",
                "hd/v1/+/down/#",
                "hd/v1/#",
                "#",
                f"hd/v1/{me}/up/#",
                f"$share/g/hd/v1/{me}/down/#",
            ):
                granted = await attacker.subscribe(topic_filter, qos=1)
                assert [int(getattr(g, "value", g)) for g in granted] == [0x80], topic_filter
            assert [int(getattr(g, "value", g)) for g in await attacker.subscribe(f"hd/v1/{me}/down/#", qos=1)] == [1]
            # Publishing as another device, or to a device (a fake announce), is dropped.
            await attacker.publish(f"hd/v1/{victim}/up/ack", b"{}", qos=1)
            await attacker.publish(f"hd/v1/{victim}/down/announce", b'{"fake": true}', qos=1)
            await attacker.publish(f"hd/v1/{me}/down/announce", b"{}", qos=1)
            await attacker.publish("elsewhere/topic", b"{}", qos=1)
            await attacker.publish(f"hd/v1/{me}/up/health", b"{}", qos=1)
            got_server = await received(server, 1.0)
            got_target = await received(target, 0.3)
    assert got_server == [f"hd/v1/{me}/up/health"]
    assert got_target == []


async def generated_mosquitto(
    tmp_path: Path, ca: CertificateAuthority, folder: Path
) -> tuple[mosquitto.PrivateMosquitto, Path, int, int]:
    """A private Mosquitto started on the configuration `haodian broker-config` writes, with an
    empty CRL: (broker, crl file, device port, server port); skips if Mosquitto is not here."""
    crl = tmp_path / "crl.pem"
    crl.write_bytes(ca.crl([]))
    device_port, server_port = mosquitto.free_port(), mosquitto.free_port()
    lines = write_config(
        tmp_path / "conf",
        MosquittoTls(folder / "ca.pem", folder / "server.pem", folder / "server.key", crl),
        {SERVER_ACCOUNT: SERVER_PASSWORD},
        device_port=device_port,
        server_port=server_port,
        bind="127.0.0.1",
    )
    try:
        broker = mosquitto.PrivateMosquitto(tmp_path / "broker", listeners=lines, port=device_port)
    except mosquitto.MosquittoError as exc:
        pytest.skip(str(exc))
    await asyncio.to_thread(broker.start)
    return broker, crl, device_port, server_port


async def test_the_generated_mosquitto_configuration_enforces_the_same_rules(tmp_path, test_ca, unique):
    ca, folder = test_ca
    me, victim = f"MQ{unique}", f"MV{unique}"
    broker, crl, device_port, server_port = await generated_mosquitto(tmp_path, ca, folder)
    cert = ca.issue_device(me)
    cert.write(tmp_path / "me.pem", tmp_path / "me.key")

    def tls(with_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        if with_cert:
            context.load_cert_chain(tmp_path / "me.pem", tmp_path / "me.key")
        return context

    try:
        assert not await connects(device_port, None, None, me, tls_context=tls(False))
        assert not await connects(server_port, SERVER_ACCOUNT, "wrong", f"s{unique}", tls_context=tls(False))
        assert not await connects(server_port, None, None, f"anon{unique}", tls_context=tls(False))
        async with (
            aiomqtt.Client(
                "127.0.0.1",
                server_port,
                username=SERVER_ACCOUNT,
                password=SERVER_PASSWORD,
                identifier=f"s{unique}",
                tls_context=tls(False),
            ) as server,
            aiomqtt.Client("127.0.0.1", device_port, identifier=me, tls_context=tls(True)) as device,
        ):
            await server.subscribe("$share/g/hd/v1/+/up/#", qos=1)
            await device.subscribe(f"hd/v1/{victim}/down/#", qos=1)
            await device.subscribe(f"hd/v1/{me}/down/#", qos=1)
            await device.publish(f"hd/v1/{victim}/up/ack", b"{}", qos=1)
            await device.publish(f"hd/v1/{me}/up/health", b"{}", qos=1)
            await server.publish(f"hd/v1/{victim}/down/announce", b"{}", qos=1)
            await server.publish(f"hd/v1/{me}/down/announce", b"{}", qos=1)
            await server.publish(f"hd/v1/{me}/up/ack", b"{}", qos=1)  # a server cannot speak as a device
            got_server = await received(server, 1.0)
            got_device = await received(device, 0.3)
        assert got_server == [f"hd/v1/{me}/up/health"]
        assert got_device == [f"hd/v1/{me}/down/announce"]
        # Revocation on Mosquitto: the CRL names the certificate; after a restart it is refused.
        crl.write_bytes(ca.crl([cert.serial]))
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
        assert not await connects(device_port, None, None, me, tls_context=tls(True))
    finally:
        await asyncio.to_thread(broker.stop)


async def test_on_the_generated_mosquitto_configuration_no_device_can_take_another_clients_identity(
    tmp_path, test_ca, unique
):
    """A device with its own certificate connecting under the client id of device B, of the
    bridge or of the ingest closes none of them: its client id is its certificate's name."""
    ca, folder = test_ca
    me, victim = f"MT{unique}", f"MW{unique}"
    broker, _, device_port, server_port = await generated_mosquitto(tmp_path, ca, folder)
    for name in (me, victim):
        ca.issue_device(name).write(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")

    def tls(name: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        if name is not None:
            context.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        return context

    def server(client_id: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            server_port,
            username=SERVER_ACCOUNT,
            password=SERVER_PASSWORD,
            identifier=client_id,
            tls_context=tls(None),
        )

    try:
        async with (
            aiomqtt.Client("127.0.0.1", device_port, identifier=victim, tls_context=tls(victim)) as device_b,
            server("haodian.bridge") as bridge,
            server("haodian.ingest") as ingest,
        ):
            for client in (device_b, bridge, ingest):
                await client.subscribe(
                    f"hd/v1/{me}/up/#" if client is not device_b else f"hd/v1/{victim}/down/#", qos=1
                )
            for borrowed in (victim, "haodian.bridge", "haodian.ingest", "haodian-bridge"):
                for _ in range(3):  # repeated, as the tester did
                    async with aiomqtt.Client(
                        "127.0.0.1", device_port, identifier=borrowed, tls_context=tls(me)
                    ) as impostor:
                        await impostor.publish(f"hd/v1/{me}/up/health", b"{}", qos=1)
            # Everyone is still connected on their first connection: each still hears its own.
            await bridge.publish(f"hd/v1/{victim}/down/announce", b"{}", qos=1)
            assert await received(device_b, 1.0) == [f"hd/v1/{victim}/down/announce"]
            for held in (bridge, ingest):
                got = await received(held, 0.5)
                assert got == [f"hd/v1/{me}/up/health"] * 12, got
    finally:
        await asyncio.to_thread(broker.stop)


async def test_agents_and_the_api_over_tls_with_provisioned_credentials(
    tmp_path, embedded_database, server_keys, unique, test_ca
):
    """The whole server on the embedded broker with access control, MQTT over TLS and HTTPS; a
    real agent with its provisioned secret connects over TLS, and the API answers over HTTPS."""
    _, folder = test_ca
    settings = Settings(
        data_dir=tmp_path,
        http_port=0,
        mqtt_client_prefix=f"t{unique}",
        mqtt_tls_cert_file=folder / "server.pem",
        mqtt_tls_key_file=folder / "server.key",
        mqtt_tls_port=0,
        http_tls_cert_file=folder / "server.pem",
        http_tls_key_file=folder / "server.key",
    )
    device = f"TL{unique}"
    async with contextlib.AsyncExitStack() as stack:
        broker, endpoint = await start_embedded_broker(
            stack, settings, database_url=embedded_database, keys=server_keys
        )
        server = await stack.enter_async_context(
            ServerStack(
                settings, parts={Part.FLEET}, endpoint=endpoint, database_url=embedded_database, keys=server_keys
            )
        )
        assert server.base_url.startswith("https://")
        async with await api_client(server, verify=ssl.create_default_context(cafile=str(folder / "ca.pem"))) as http:
            issued = (await http.post(f"/api/v1/registry/devices/{device}/credentials")).json()
            again = await http.post(f"/api/v1/registry/devices/{device}/credentials")
            assert again.status_code == 409
        assert broker.tls_endpoint is not None
        from edge_agent.config import AgentConfig  # noqa: PLC0415
        from mqtt_link.link import Link  # noqa: PLC0415

        config = AgentConfig(
            device_id=device,
            broker_url=f"mqtts://127.0.0.1:{broker.tls_endpoint.port}",
            server_keys=[server_keys.server_public_key_b64],
            state_dir=tmp_path / "agent",
            ca_file=folder / "ca.pem",
            device_secret=issued["device_secret"],
        )
        assert issued["device_secret"] == encode_secret(
            DeviceCredentials(server.pool, server_keys.device_master_key).secret(device, 1)
        )
        link = Link(
            config.broker_endpoint(),
            client_id=device,
            subscriptions=[f"hd/v1/{device}/down/#"],
            on_message=_ignore,
            tls=config.tls(),
            password=config.mqtt_password,
        )
        async with link:
            await link.wait_connected(10)
        # Plain HTTP to the HTTPS port is refused, not served.
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient() as plain:
                await plain.get(server.base_url.replace("https://", "http://") + "/healthz")


async def _ignore(_: Delivery) -> None:
    return None


async def test_a_client_refuses_a_broker_whose_certificate_our_ca_did_not_sign(
    tmp_path, test_ca, machine_database, server_keys
):
    """A device that trusts only our CA cannot be fooled into talking to an impostor broker (a
    fake one that would send it announces): a certificate from another CA fails the handshake."""
    _, folder = test_ca
    impostor = CertificateAuthority.create("Impostor CA")
    impostor.issue_server("127.0.0.1", ["127.0.0.1"]).write(tmp_path / "bad.pem", tmp_path / "bad.key")
    tls = BrokerTls(tmp_path / "bad.pem", tmp_path / "bad.key")
    async with secured_broker(machine_database, server_keys.device_master_key, tls=tls) as (broker, _):
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", broker.tls_port, ssl=context)


async def test_sensitive_fields_are_sealed_at_rest_found_by_keyed_hash_and_rewrapped(
    tmp_path, embedded_database, server_keys, unique
):
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"t{unique}")
    merchant, phone, account = f"MS{unique}", "13800138000", "6222020200112233445"
    csv_text = (
        "city_id,district_id,store_id,agent_id,agent_phone,merchant_id,merchant_name,merchant_contact,"
        "merchant_phone,settlement_account,device_id,serial,model\n"
        f"BJ,WJ,S-WJ,A-{unique},13900139000,{merchant},老王面馆,王建国,{phone},{account},SD{unique},SN{unique},HD-S1\n"
    )
    async with in_process_stack(settings, embedded_database, server_keys) as (_, server):
        async with await api_client(server) as admin, await api_client(server, Role.OPS_VIEWER) as viewer:
            imported = await admin.post(
                "/api/v1/registry/import", params={"dry_run": "false"}, content=csv_text.encode()
            )
            assert imported.status_code == 200, imported.text
            assert imported.json()["applied"] == 1
            masked_view = (await viewer.get("/api/v1/registry/merchants", params={"phone": "+86 138 0013 8000"})).json()
            assert [
                (m["merchant_id"], m["phone"], m["settlement_account"], m["contact_name"]) for m in masked_view
            ] == [(merchant, "138****8000", "****3445", "王**")]
            assert (
                await viewer.get("/api/v1/registry/merchants", params={"phone": phone, "clear": "true"})
            ).status_code == 403
            clear = (
                await admin.get("/api/v1/registry/merchants", params={"merchant_id": merchant, "clear": "true"})
            ).json()
            assert (clear[0]["phone"], clear[0]["settlement_account"], clear[0]["contact_name"]) == (
                phone,
                account,
                "王建国",
            )
        async with await psycopg.AsyncConnection.connect(embedded_database) as conn:
            row = await (
                await conn.execute("SELECT m::text FROM merchants m WHERE merchant_id = %s", (merchant,))
            ).fetchone()
            agent = await (
                await conn.execute("SELECT f::text FROM field_agents f WHERE agent_id = %s", (f"A-{unique}",))
            ).fetchone()
        for clear_value in (phone, account, "王建国"):
            assert clear_value not in row[0], "nothing in clear at rest"
        assert "13900139000" not in agent[0]
        # Rotation: a new active key; the rewrap re-seals every envelope under it.
        contacts = server.contacts
        old = server_keys.field_keys
        rotated = FieldKeys("k2", {**old.keys, "k2": os.urandom(32)}, old.hash_key)
        fresh = Contacts(contacts.pool, FieldCipher(rotated))
        assert await fresh.rewrap() >= 4
        assert await fresh.rewrap() == 0
        assert (await fresh.merchants(phone=phone))[0].settlement_account == account
