"""The fault rig: the whole system as separate processes, each of which a fault case may kill -9
and start again, and the checks every case ends with.

    private PostgreSQL (pgserver, its own postmaster)   private Mosquitto (persistent)
    haodian server --parts fleet                         haodian server --parts bridge
    agents `haodian agent run`: DIRECT straight to the broker, PROXIED through our TCP proxy
    a payment backend that retries every notification until the bridge answers 200, as real
    payment platforms do

`Rig.check()` is the end of every case: every payment and refund the backend sent is recorded, every
device played each of its payments exactly once (from the speakers' own play logs), every
delivery is recorded as played, and the bridge's delivery figures agree with all of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.env import BenchError
from bench.http import wait_http
from firmware_protocols.messages import Channel
from firmware_protocols.signing import encode_public_key
from haodian.keys import dev_key_paths, ensure_dev_keys, read_rsa_private_key, read_signing_key
from payment_bridge.keyring import PUBLIC_KEY_ID_PREFIX
from payment_bridge.notifications import refund_payment_id
from simulators.backend import PaymentBackend
from simulators.mosquitto import PrivateMosquitto
from simulators.netproxy import NetProxy, free_port
from simulators.platforms import SP_MCHID, WechatPayPlatform
from simulators.registry import register_now
from tests.integration.resilience_kit import plays
from tests.processes import Processes, cli_token

MERCHANT = "M-FAULT"
DIRECT, PROXIED = "FLT-A", "FLT-B"
# Bounds for things to happen; generous, so that a busy machine never fails a case.
SETTLE_S = 90.0


class PrivatePostgres:
    """A PostgreSQL of the rig's own (pgserver's binaries), started by a helper process so that
    its postmaster is not a child of the test: `kill()` is a real kill -9 of the postmaster."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = f"postgresql://postgres@/postgres?host={folder}"

    def start(self) -> None:
        script = (
            "import sys, warnings; warnings.simplefilter('ignore'); import pgserver;"
            " pgserver.get_server(sys.argv[1], cleanup_mode=None)"
        )
        subprocess.run([sys.executable, "-c", script, str(self.folder)], check=True, timeout=120)

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.folder / "postmaster.pid").read_text().split()[0])
        return None

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@dataclass
class Sent:
    payment_id: str
    attempts: int = 0
    answered: bool = False
    refusals: list[int] = field(default_factory=list)
    refund: bool = False  # a refund of an earlier payment, announced as 退款
    # (began, ended, status) of every attempt on the monotonic clock; status 0 = no answer
    tries: list[tuple[float, float, int]] = field(default_factory=list)


class Rig:
    def __init__(self, folder: Path, processes: Processes) -> None:
        self.folder = folder
        self.procs = processes
        self.pg = PrivatePostgres(folder / "pg")
        self.broker = PrivateMosquitto(folder / "mosquitto")
        self.proxy = NetProxy(("127.0.0.1", self.broker.port))
        self.data_dir = folder / "data"
        self.fleet_port, self.bridge_port = free_port(), free_port()
        self.sent: list[Sent] = []
        self.env: dict[str, str] = {}
        self.server_key = ""
        self.backend: PaymentBackend | None = None
        self._bridge_token = ""
        self._fleet_token = ""
        # Stand-ins for WeChat Pay's platform key and APIv3 key (test-only, made now); the bridge
        # process trusts them, so the rig can send partner-mode payments and refunds as WeChat does.
        self.wechat = WechatPayPlatform(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            serial=f"{PUBLIC_KEY_ID_PREFIX}0111200000000000000000000000000009",
            apiv3_key=b"test-only-apiv3-key-0123456789ab",
        )

    # -- parts ------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.pg.start)
        await asyncio.to_thread(self.broker.start)
        await self.proxy.__aenter__()
        ensure_dev_keys(self.data_dir)
        self.server_key = encode_public_key(read_signing_key(dev_key_paths(self.data_dir)[0]).public_key())
        wechat_keys = self.folder / "wechatpay"
        wechat_keys.mkdir(exist_ok=True)
        public = self.wechat.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (wechat_keys / f"{self.wechat.serial}.pem").write_bytes(public)
        (self.folder / "apiv3.key").write_bytes(self.wechat.apiv3_key)
        self.env = {
            "HAODIAN_WECHATPAY_KEYS_DIR": str(wechat_keys),
            "HAODIAN_WECHATPAY_APIV3_KEY_FILE": str(self.folder / "apiv3.key"),
            "HAODIAN_WECHATPAY_MCHIDS": f'["{SP_MCHID}"]',
            "HAODIAN_MQTT_URL": self.broker.url(),
            "HAODIAN_DATABASE_URL": self.pg.url,
            "HAODIAN_DATA_DIR": str(self.data_dir),
            "HAODIAN_ACK_TIMEOUT_S": "2",
            "HAODIAN_LOG_LEVEL": "WARNING",
        }
        self.start_server("fleet")
        self.start_server("bridge")
        self.start_agent(DIRECT)
        self.start_agent(PROXIED, via_proxy=True)
        self._bridge_token = await asyncio.to_thread(cli_token, self.env, self.folder, "fault-backend", "backend")
        self._fleet_token = await asyncio.to_thread(cli_token, self.env, self.folder, "fault-viewer", "ops-viewer")
        await self.wait_http(self.bridge_port)
        await self.wait_http(self.fleet_port)
        await asyncio.to_thread(register_now, self.pg.url, devices=[DIRECT, PROXIED], merchants=[MERCHANT])
        for device in (DIRECT, PROXIED):
            await self.until(lambda d=device: self.online(d), f"{device} online")
            async with self.bridge() as bridge:
                answer = await bridge.post("/api/v1/bindings", json={"device_id": device, "merchant_id": MERCHANT})
                assert answer.is_success, answer.text
        self.backend = PaymentBackend(read_rsa_private_key(dev_key_paths(self.data_dir)[1]), "", [MERCHANT])

    async def stop(self) -> None:
        await asyncio.to_thread(self.procs.stop_all)
        await self.proxy.__aexit__(None, None, None)
        await asyncio.to_thread(self.broker.stop)
        await asyncio.to_thread(self.pg.stop)

    def start_server(self, part: str) -> subprocess.Popen[bytes]:
        port = self.fleet_port if part == "fleet" else self.bridge_port
        env = {**self.env, "HAODIAN_MQTT_CLIENT_PREFIX": f"fault-{part}"}
        return self.procs.start(part, "server", "--parts", part, "--port", str(port), env=env)

    def start_agent(self, device: str, *, via_proxy: bool = False, state_dir: Path | None = None) -> None:
        self.procs.start_agent(
            device,
            broker_port=self.proxy.port if via_proxy else self.broker.port,
            server_key=self.server_key,
            state_dir=state_dir or self.folder / device,
            audio_dir=self.audio(device),
        )

    def audio(self, device: str) -> Path:
        return self.folder / "audio" / device

    def kill(self, name: str) -> None:
        """kill -9 the process `name` (a server part or an agent)."""
        self.procs.kill(name)

    # -- traffic ----------------------------------------------------------------------------

    def bridge(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.bridge_port}",
            headers={"authorization": f"Bearer {self._bridge_token}"},
            timeout=5,
        )

    async def pay(self, count: int, *, rate_per_s: float = 5.0) -> None:
        """Send `count` payments, each retried until the bridge answers 200 (as Alipay and WeChat
        Pay retry): a notification refused or unanswered during a fault is sent again. Every
        fourth payment is then partly refunded, the refund sent and retried the same way."""
        assert self.backend is not None
        backend = self.backend
        async with self.bridge() as bridge:

            async def paid_then_refunded(i: int) -> None:
                body, headers = backend.notification(amount_fen=100 + i, channel=Channel.WECHAT)
                sent = Sent(json.loads(body)["payment_id"])
                self.sent.append(sent)
                await self._deliver(bridge, sent, body, headers)
                if i % 4 == 3:
                    refund_body, refund_headers = backend.refund(json.loads(body), (100 + i) // 2)
                    refund = Sent(refund_payment_id("refund", json.loads(refund_body)["refund_id"]), refund=True)
                    self.sent.append(refund)
                    await self._deliver(bridge, refund, refund_body, refund_headers)

            tasks = []
            for i in range(count):
                tasks.append(asyncio.create_task(paid_then_refunded(i)))
                await asyncio.sleep(1 / rate_per_s)
            await asyncio.gather(*tasks)

    @staticmethod
    def backend_payment_id(body: bytes) -> str:
        return str(json.loads(body)["payment_id"])

    async def _deliver(self, bridge: httpx.AsyncClient, sent: Sent, body: bytes, headers: dict[str, str]) -> None:
        await self.deliver(bridge, sent, body, headers, "/api/v1/notifications/backend")

    async def deliver(
        self, bridge: httpx.AsyncClient, sent: Sent, body: bytes, headers: dict[str, str], path: str
    ) -> None:
        """Post one notification to `path` until it is answered 2xx, as the platforms retry."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            sent.attempts += 1
            began = time.monotonic()
            try:
                answer = await bridge.post(path, content=body, headers=headers)
            except httpx.HTTPError:
                sent.tries.append((began, time.monotonic(), 0))
                sent.refusals.append(0)
            else:
                sent.tries.append((began, time.monotonic(), answer.status_code))
                if answer.is_success:
                    sent.answered = True
                    return
                sent.refusals.append(answer.status_code)
            await asyncio.sleep(0.5)

    # -- waiting and checking ---------------------------------------------------------------

    async def wait_http(self, port: int) -> None:
        """Until the server on `port` answers; on failure the error carries every process's log
        (a CI run once timed out here with nothing to read)."""
        try:
            await wait_http(port, timeout_s=SETTLE_S)
        except BenchError as exc:
            raise AssertionError(f"{exc} (port {port})\n{self.procs.logs()}") from exc

    async def until(self, check: object, what: str, timeout_s: float = SETTLE_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError, OSError, psycopg.Error):
                if await check():  # type: ignore[operator]
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{self.procs.logs()}")
            await asyncio.sleep(0.2)

    async def online(self, device: str) -> bool:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.fleet_port}",
            headers={"authorization": f"Bearer {self._fleet_token}"},
            timeout=5,
        ) as fleet:
            answer = await fleet.get(f"/api/v1/devices/{device}")
            return answer.status_code == 200 and bool(answer.json()["online"])

    async def _deliveries(self) -> dict[tuple[str, str], str]:
        async with await psycopg.AsyncConnection.connect(self.pg.url) as conn:
            cur = await conn.execute("SELECT payment_id, device_id, status FROM deliveries")
            return {(p, d): s for p, d, s in await cur.fetchall()}

    async def check(self, devices: tuple[str, ...] = (DIRECT, PROXIED)) -> dict[str, int]:
        """The end of every case: nothing lost, nothing twice, figures consistent. Returns the
        counts the case can report."""
        ids = [s.payment_id for s in self.sent]
        assert all(s.answered for s in self.sent), [s for s in self.sent if not s.answered]

        async def all_played() -> bool:
            deliveries = await self._deliveries()
            return all(deliveries.get((p, d)) == "played" for p in ids for d in devices)

        await self.until(all_played, "every delivery played")
        async with await psycopg.AsyncConnection.connect(self.pg.url) as conn:
            cur = await conn.execute("SELECT payment_id FROM payments WHERE payment_id = ANY(%s)", (ids,))
            recorded = {p for (p,) in await cur.fetchall()}
        assert recorded == set(ids), "every payment the backend sent is recorded"
        for device in devices:
            played = plays(self.audio(device))
            assert {p: played.get(p, 0) for p in ids} == dict.fromkeys(ids, 1), f"{device}: each payment once"
        async with self.bridge() as bridge:
            summary = (await bridge.get("/api/v1/deliveries/summary")).json()
        refunds = [s.payment_id for s in self.sent if s.refund]
        assert summary["deliveries"] == summary["delivered"] == (len(ids) - len(refunds)) * len(devices)
        assert summary["refunds"]["deliveries"] == summary["refunds"]["delivered"] == len(refunds) * len(devices)
        return {
            "payments": len(ids) - len(refunds),
            "refunds": len(refunds),
            "retried_by_backend": sum(s.attempts > 1 for s in self.sent),
            "plays": sum(sum(plays(self.audio(d)).values()) for d in devices),
        }

    async def health_gaps(self, device: str, since: float) -> float:
        """The longest gap, in seconds, between the health reports stored for `device` since
        `since` (unix time): reports lost anywhere show up as a gap."""
        async with await psycopg.AsyncConnection.connect(self.pg.url) as conn:
            cur = await conn.execute(
                "SELECT extract(epoch FROM ts) FROM device_health WHERE device_id = %s AND ts >= to_timestamp(%s)"
                " ORDER BY ts",
                (device, since),
            )
            stamps = [float(t) for (t,) in await cur.fetchall()]
        assert len(stamps) >= 2, f"{device}: health stored since the fault"
        return max(b - a for a, b in itertools.pairwise(stamps))
