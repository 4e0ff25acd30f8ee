"""A fleet for the wrong-clock tests: the server in this process (embedded broker with access
control, the fleet part and the bridge), and real `haodian agent run` processes whose clocks
libfaketime moves, each with its provisioned secret and, where the case says, a virtual modem on
a pseudo-terminal that answers AT+QLTS/AT+CCLK with this machine's (true) time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from firmware_protocols.messages import Announce, Channel
from firmware_protocols.signing import Signer
from fleet_server.identity.certs import CertificateAuthority
from haodian.keys import ServerKeys
from haodian.server import Part, ServerStack, start_embedded_broker
from haodian.settings import Settings
from mqtt_link.tasks import cancel_and_wait
from simulators.backend import PaymentBackend
from simulators.registry import register
from simulators.serial_peers import VirtualModem
from tests.integration.conftest import api_client
from tests.integration.resilience_kit import plays
from tests.processes import Processes

LIBFAKETIME = next(
    (
        p
        for p in (
            Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/faketime/libfaketime.so.1"),
        )
        if p.exists()
    ),
    None,
)
needs_faketime = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (Debian package faketime; ./dev test installs it)"
)

# Each case: libfaketime's FAKETIME, and how far the board's clock is off (s, + fast); None: 1970.
CLOCKS: dict[str, tuple[str, float | None]] = {
    "5 min fast": ("+5m", 300),
    "5 min slow": ("-5m", -300),
    "15 min fast": ("+15m", 900),
    "15 min slow": ("-15m", -900),
    "1 day slow": ("-1d", -86_400),
    "1970": ("@1970-01-01 00:00:00", None),
    "200 ppm drift": ("+0 x1.0002", 0),
}
TTL_S = 60


@dataclass
class Device:
    device_id: str
    case: str
    folder: Path
    modem: VirtualModem | None = None
    started_at: float = 0.0  # monotonic
    started_wall: float = 0.0
    measured: dict[str, Any] = field(default_factory=dict)  # what the checks saw (`Fleet.report`)

    @property
    def audio(self) -> Path:
        return self.folder / "audio"

    def expected_off_s(self) -> float:
        """How far the board's clock is from the true time (s, + fast). A 1970 board started at
        0 when its process did, so it is behind by the true time of that start."""
        off = CLOCKS[self.case][1]
        return -self.started_wall if off is None else off


@dataclass
class Fleet:
    folder: Path
    server: ServerStack
    keys: ServerKeys
    backend: PaymentBackend
    procs: Processes
    endpoint: Any
    devices: list[Device] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    ca_file: Path | None = None  # with TLS: MQTT over TLS for the agents, HTTPS for everyone
    tls_port: int | None = None

    def _api(self) -> Any:
        verify = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
        return api_client(self.server, verify=verify)

    @property
    def time_url(self) -> str:
        return f"{self.server.base_url}/api/v1/time"

    async def add_device(
        self,
        device_id: str,
        case: str | None,
        *,
        modem: bool,
        server_time: bool,
        registered: bool = True,
        config: dict[str, Any] | None = None,
    ) -> Device:
        """A real `haodian agent run` with its clock as `case` says (None: this machine's) and
        `config` on top of the test configuration."""
        device = Device(device_id, case or "true clock", self.folder / device_id)
        device.folder.mkdir(parents=True)
        async with await self._api() as admin:
            issued = await admin.post(f"/api/v1/registry/devices/{device_id}/credentials")
            assert issued.status_code == 200, issued.text
        sources = [name for name, on in (("modem", modem), ("server", server_time)) if on]
        broker_url = f"mqtts://127.0.0.1:{self.tls_port}" if self.tls_port else f"mqtt://127.0.0.1:{self.endpoint.port}"
        settings: dict[str, Any] = {
            "device_id": device_id,
            "broker_url": broker_url,
            "server_keys": [self.keys.server_public_key_b64],
            "state_dir": str(device.folder / "state"),
            "device_secret": issued.json()["device_secret"],
            "health_interval_s": 1.0,
            "reconnect_initial_s": 0.2,
            "reconnect_max_s": 2.0,
            "time_sources": sources,
            "time_sync_interval_s": 10.0,
            **(config or {}),
        }
        if server_time:
            settings["time_url"] = self.time_url
        if self.ca_file is not None:
            settings["ca_file"] = str(self.ca_file)
        if modem:
            device.modem = VirtualModem(device.folder / "modem")
            device.modem.appear()
            device.modem.state.registered = registered
            settings["modem_port"] = str(device.folder / "modem")
        toml = "\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
        (device.folder / "agent.toml").write_text(toml + "\n", encoding="utf-8")
        self.devices.append(device)
        self.start(device)
        return device

    def start(self, device: Device) -> None:
        """Start (or start again) the device's `haodian agent run`."""
        env = {"HAODIAN_LOG_LEVEL": "INFO"}
        device.started_at, device.started_wall = time.monotonic(), float(int(time.time()))
        if device.case in CLOCKS:
            faketime, off = CLOCKS[device.case]
            env |= {
                "LD_PRELOAD": str(LIBFAKETIME),
                # A 1970 board: 0 at this start, for the launcher and the agent it starts alike
                # (an absolute "@1970" would start each process's clock at 0 on its own).
                "FAKETIME": f"-{device.started_wall:.0f}" if off is None else faketime,
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # asyncio's timers stay sane; wall time is what is wrong
            }
        self.procs.start(
            device.device_id,
            "agent",
            "run",
            "--config",
            str(device.folder / "agent.toml"),
            "--audio-dir",
            str(device.audio),
            env=env,
        )

    async def online(self, device_id: str) -> bool:
        async with await self._api() as admin:
            answer = await admin.get(f"/api/v1/devices/{device_id}")
        return answer.status_code == 200 and bool(answer.json()["online"])

    async def device(self, device_id: str) -> dict[str, Any]:
        return await self._get(f"/api/v1/devices/{device_id}")

    async def _get(self, path: str) -> dict[str, Any]:
        async with await self._api() as admin:
            answer = await admin.get(path)
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

    async def bind(self, device_id: str, merchant_id: str) -> None:
        async with await self._api() as admin:
            answer = await admin.post("/api/v1/bindings", json={"device_id": device_id, "merchant_id": merchant_id})
            assert answer.is_success, answer.text

    async def pay(self, merchant_id: str) -> str:
        body, headers = self.backend.notification(merchant_id=merchant_id, amount_fen=1250, channel=Channel.WECHAT)
        verify = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
        async with httpx.AsyncClient(timeout=10, verify=verify) as client:
            answer = await self.backend.send(client, body, headers)
        assert answer.is_success, answer.text
        return str(json.loads(body)["payment_id"])

    async def payment(self, payment_id: str) -> dict[str, Any]:
        return await self._get(f"/api/v1/payments/{payment_id}")

    def _server_client(self, identifier: str) -> aiomqtt.Client:
        """A client on the server's broker account (it may publish to and hear every device)."""
        e = self.endpoint
        return aiomqtt.Client(e.host, e.port, username=e.username, password=e.password, identifier=identifier)

    async def publish_stale(self, device_id: str, payment_id: str) -> None:
        """A genuine, signed announce whose time to live ended a minute ago (held by a broker)."""
        now = time.time_ns() // 1_000_000
        issued = now - (TTL_S + 60) * 1000
        announce = Signer(self.keys.signing_key).sign(
            Announce(
                device_id=device_id,
                ts=issued,
                payment_id=payment_id,
                amount_fen=999,
                channel="wechat",
                paid_at=issued,
                issued_at=issued,
                ttl_s=TTL_S,
                key_id="x",
            )
        )
        async with self._server_client(f"test-stale-{device_id}") as client:
            await client.publish(f"hd/v1/{device_id}/down/announce", announce.to_json(), qos=1)

    def report(self, device: Device) -> None:
        """Append what was measured of `device` to the JSON-lines file HAODIAN_CLOCK_REPORT
        names, if it is set (how the issue's table of cases is filled in with measured values)."""
        target = os.environ.get("HAODIAN_CLOCK_REPORT")
        if target:
            with Path(target).open("a", encoding="utf-8") as out:
                out.write(json.dumps({"case": device.case, **device.measured}, ensure_ascii=False) + "\n")

    def played(self, device: Device) -> dict[str, int]:
        return dict(plays(device.audio))

    @contextlib.asynccontextmanager
    async def hearing_acks(self) -> AsyncIterator[None]:
        """Every ack any device sends lands in `acks` while inside."""
        ready = asyncio.Event()
        listener = asyncio.create_task(self.listen_acks(ready))
        await ready.wait()
        try:
            yield
        finally:
            await cancel_and_wait(listener)

    async def listen_acks(self, ready: asyncio.Event) -> None:
        async with self._server_client("test-acks") as client:
            await client.subscribe("hd/v1/+/up/ack", qos=1)
            ready.set()
            async for message in client.messages:
                self.acks.append({**json.loads(bytes(message.payload)), "_arrived_ms": time.time_ns() // 1_000_000})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def time_fleet(
    tmp_path: Path,
    database_url: str,
    keys: ServerKeys,
    backend_key: RSAPrivateKey,
    unique: str,
    *,
    tls: bool = False,
    max_skew_s: int = 600,
    **more: Any,
) -> AsyncIterator[Fleet]:
    """The server in this process; agents are added with `Fleet.add_device`. With `tls`, a CA
    made now (test-only) signs the broker's and the HTTPS listener's certificate; `max_skew_s`:
    how far from its clock the broker takes a device's password; `more`: other server settings."""
    ca_file, tls_files = None, {}
    if tls:
        folder = tmp_path / "ca"
        ca = CertificateAuthority.create("Haodian wrong-clock test CA")
        ca.write(folder)
        ca.issue_server("127.0.0.1", ["127.0.0.1"]).write(folder / "server.pem", folder / "server.key")
        ca_file = folder / "ca.pem"
        tls_files = {
            "mqtt_tls_cert_file": folder / "server.pem",
            "mqtt_tls_key_file": folder / "server.key",
            "mqtt_tls_port": 0,
            "http_tls_cert_file": folder / "server.pem",
            "http_tls_key_file": folder / "server.key",
        }
    settings = Settings(
        data_dir=tmp_path / "server",
        http_port=0,
        mqtt_client_prefix=f"t{unique}",
        announce_ttl_s=TTL_S,
        ack_timeout_s=3,
        device_auth_max_skew_s=max_skew_s,
        **tls_files,
        **more,
    )
    procs = Processes(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        broker, endpoint = await start_embedded_broker(stack, settings, database_url=database_url, keys=keys)
        server = await stack.enter_async_context(
            ServerStack(
                settings, parts={Part.FLEET, Part.BRIDGE}, endpoint=endpoint, database_url=database_url, keys=keys
            )
        )
        fleet = Fleet(tmp_path, server, keys, PaymentBackend(backend_key, server.base_url, ["M"]), procs, endpoint)
        fleet.ca_file, fleet.tls_port = ca_file, broker.tls_port
        stack.callback(procs.stop_all)
        try:
            yield fleet
        except Exception as exc:
            exc.add_note(procs.logs())  # the agents' last words, in the failure's report
            raise


async def register_fleet(fleet: Fleet, devices: list[str], merchants: list[str]) -> None:
    await register(fleet.server.pool, devices=devices, merchants=merchants)
