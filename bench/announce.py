"""`announce`: payment notification in -> playback start on the device, under a steady rate.

Processes, as in production: the payment bridge (`haodian server --parts bridge`, with
`--workers N` for several processes sharing one port and the ack stream); a device farm, one MQTT
client standing in for `devices` speakers (it subscribes to every device's announce topic,
verifies each announce's Ed25519 signature, as a speaker does before playing, and acks it
`played` at once, so what is measured is the bridge, broker and database, not audio); and this
process, the payment backend, sending RSA2-signed notifications over keep-alive HTTP/1.1
connections (signed before the timed run: signing is the backend's cost, not ours). Everything
shares this machine's cores.

Figures: notifications answered per second (achieved against offered); the backend's answer
time (from when each notification was due, so queueing in the sender counts); notification
received -> playback start p50/p95/p99/max, from the database, split at the moment the bridge
signed the announce (the bridge's own part: verify, record durably, sign; then the broker hop
and the device); deliveries played / missed / pending; the bridge processes' CPU per
notification. Ceilings on the same run: the raw broker hop (a minimal client publishing
announce-sized QoS 1 messages to another at the same rate, publish -> receipt) and a raw
durable commit (one-row INSERT, autocommit) on the same database.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import aiomqtt
import httpx
import uvloop
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from bench.announce_db import SETTLE_S, alerts_settled, commit_ceiling, results
from bench.env import BenchError, Broker, BrokerKind, Database, DatabaseKind, broker, broker_hop, database, nodelay
from bench.floor import Floor, measure_floor
from bench.http import offer, wait_http
from bench.shares import CpuShares
from bench.stats import fmt, percentiles, process_tree_cpu_s
from firmware_protocols import topics
from firmware_protocols.messages import Ack, AckStatus, Announce
from firmware_protocols.signing import Verifier, decode_public_key, encode_public_key
from fleet_server.auth.roles import Role
from fleet_server.auth.store import AuthStore
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from haodian.keys import dev_key_paths, ensure_dev_keys, read_rsa_private_key, read_rsa_public_key, read_signing_key
from simulators.backend import PaymentBackend
from simulators.netproxy import free_port
from simulators.registry import register

START_TIMEOUT_S = 90.0
# Keep-alive connections per bridge process, as a backend's HTTP client pool would hold.
CONNECTIONS = 64
# The ceilings are measured for this long (at most the run's duration).
CEILING_S = 10.0
ANNOUNCE_FILTER = f"{topics.ROOT}/{topics.VERSION}/+/{topics.Direction.DOWN}/{topics.Down.ANNOUNCE}"


def _farm_process(port: int, server_key_b64: str, ready: Event, stop: Event, hops: Queue[dict[str, int]]) -> None:
    """Every device at once: verify each announce and ack it as played; at `stop`, hand back the
    broker hop of each (the bridge's signing time -> here, in ms).

    Lean on purpose, because it shares the machine with what is measured: uvloop, and each ack
    handed to paho without waiting for its PUBACK. The signature check stays: it is what a speaker
    does before playing."""
    quiet = logging.getLogger("bench.farm")
    quiet.setLevel(logging.ERROR)
    verifier = Verifier([decode_public_key(server_key_b64)])
    hop_ms: dict[str, int] = {}

    async def serve(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            announce = Announce.model_validate_json(payload)
            verifier.verify(announce)  # a speaker's work; a bad one would raise and end the farm
            now = int(time.time() * 1000)
            hop_ms[announce.payment_id] = now - announce.issued_at
            ack = Ack(
                device_id=announce.device_id,
                ts=now,
                payment_id=announce.payment_id,
                status=AckStatus.PLAYED,
                received_at=now,
                play_started_at=now,
            )
            client._client.publish(topics.up(announce.device_id, topics.Up.ACK), ack.model_dump_json(), qos=1)

    async def run() -> None:
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier="bench-farm",
            username="bench-farm",
            max_inflight_messages=1000,
            logger=quiet,
            socket_options=nodelay(),
        ) as client:
            await client.subscribe(ANNOUNCE_FILTER, qos=1)
            ready.set()
            serving = asyncio.create_task(serve(client))
            await asyncio.to_thread(stop.wait)
            serving.cancel()
        hops.put(hop_ms)

    uvloop.run(run())


def _sign_chunk(
    key_file: str, merchants: list[str], run_id: str, first: int, count: int
) -> list[tuple[bytes, dict[str, str]]]:
    backend = PaymentBackend(read_rsa_private_key(Path(key_file)), "http://unused", merchants, run_id=run_id)
    return [backend.notification(merchant_id=merchants[(first + i) % len(merchants)]) for i in range(count)]


def _sign_all(key_file: Path, merchants: list[str], total: int) -> list[tuple[bytes, dict[str, str]]]:
    """The backend's notifications for the run, signed on every core (RSA signing is slow)."""
    workers = os.cpu_count() or 1
    chunk = -(-total // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = pool.map(
            _sign_chunk,
            *zip(
                *[
                    (str(key_file), merchants, f"w{n}{os.getpid()}", n * chunk, min(chunk, total - n * chunk))
                    for n in range(workers)
                ],
                strict=True,
            ),
        )
        return [note for part in parts for note in part]


@dataclass(frozen=True, slots=True)
class AnnounceFigures:
    bridges: int
    devices: int
    broker: str
    database: str
    offered_per_s: float
    duration_s: float
    sent: int
    answered_ok: int
    answer_errors: int
    achieved_per_s: float
    answer_ms: dict[str, float | None]
    latency_ms: dict[str, float | None]
    bridge_part_ms: dict[str, float | None]
    hop_ms: dict[str, float | None]
    delivered: int
    missed: int
    pending: int
    bridge_cpu_us_per_notification: float
    ceiling_broker_hop_ms: dict[str, float | None]
    ceiling_commit_ms: dict[str, float | None]
    payments_per_write: float
    floor: Floor
    cpu_shares: str

    @property
    def held(self) -> bool:
        """Every notification answered, every delivery played, at 98 % of the offered rate or more."""
        return (
            self.answered_ok == self.sent
            and self.delivered == self.sent
            and self.achieved_per_s >= 0.98 * self.offered_per_s
        )

    def lines(self) -> list[str]:
        return [
            f"broker: {self.broker}",
            f"database: {self.database}",
            f"bridge processes {self.bridges}, devices {self.devices:,},"
            f" offered {self.offered_per_s:,.0f}/s for {self.duration_s:.0f} s",
            f"notifications sent {self.sent:,}, answered 200 {self.answered_ok:,}, errors {self.answer_errors:,};"
            f" achieved {self.achieved_per_s:,.0f}/s",
            f"backend's answer time (ms): {fmt(self.answer_ms)}",
            f"notification received -> playback start (ms): {fmt(self.latency_ms)}",
            f"  of which received -> announce signed (verify, record, sign; ms): {fmt(self.bridge_part_ms)}",
            f"  and announce signed -> at the device (broker hop, ms resolution): {fmt(self.hop_ms)}",
            f"deliveries played {self.delivered:,}, missed {self.missed:,}, still pending {self.pending:,}"
            f" -> {'held without loss' if self.held else 'NOT held'}",
            f"bridge CPU: {self.bridge_cpu_us_per_notification:,.0f} us per notification (all bridge processes),"
            f" {1e6 / max(self.bridge_cpu_us_per_notification, 1e-9):,.0f} notifications/s per core,"
            f" {self.bridge_cpu_us_per_notification / max(self.floor.total_us, 1e-9):.1f}x the floor",
            self.floor.line(),
            f"payments per batched write (rows one transaction wrote): {self.payments_per_write:.1f}",
            self.cpu_shares,
            f"ceiling, raw broker hop at the same rate (ms): {fmt(self.ceiling_broker_hop_ms)}",
            f"ceiling, raw durable commit of one row (ms): {fmt(self.ceiling_commit_ms)}",
        ]


async def measure_announce(
    *,
    rate: float,
    duration_s: float,
    devices: int = 1000,
    bridges: int = 1,
    broker_kind: BrokerKind = "private",
    database_kind: DatabaseKind = "machine",
) -> AnnounceFigures:
    total = int(rate * duration_s)
    with tempfile.TemporaryDirectory(prefix="haodian-bench-announce-") as folder:
        data_dir = Path(folder)
        ensure_dev_keys(data_dir)
        signing_path, backend_private_path, backend_public_path = dev_key_paths(data_dir)
        server_key_b64 = encode_public_key(read_signing_key(signing_path).public_key())
        merchants = [f"BM{i:05d}" for i in range(devices)]
        print(f"signing {total:,} notifications (the backend's work, before the timed run)", flush=True)
        notes = await asyncio.to_thread(_sign_all, backend_private_path, merchants, total)
        async with broker(broker_kind) as mqtt, database(database_kind) as db:
            if bridges > 1 and not mqtt.shared_subscriptions:
                raise BenchError("several bridge processes need shared subscriptions, which the embedded broker lacks")
            async with open_pool(db.url, max_size=2) as pool:
                await migrate(pool)
                token = await AuthStore(pool).service_token("bench-backend", Role.BACKEND)
                # Bindings refer to the registry: the simulated devices and merchants are in it.
                await register(pool, devices=[f"BD{i:05d}" for i in range(devices)], merchants=merchants)
                commit_ms = await commit_ceiling(pool)
            print(f"ceiling: raw broker hop at {rate:,.0f}/s for {min(CEILING_S, duration_s):.0f} s", flush=True)
            hop_ceiling = await broker_hop(mqtt.port, rate, min(CEILING_S, duration_s))
            port = free_port()
            env = {
                **os.environ,
                "HAODIAN_MQTT_URL": mqtt.url,
                "HAODIAN_DATABASE_URL": db.url,
                "HAODIAN_DATA_DIR": str(data_dir),
                "HAODIAN_SIGNING_KEY_FILE": str(signing_path),
                "HAODIAN_BACKEND_PUBLIC_KEY_FILE": str(backend_public_path),
                "HAODIAN_MQTT_CLIENT_PREFIX": "bench",
            }
            command = [sys.executable, "-m", "haodian", "--log-level", "WARNING", "server", "--parts", "bridge"]
            command += ["--port", str(port)] + (["--workers", str(bridges)] if bridges > 1 else [])
            server = await asyncio.create_subprocess_exec(
                *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=(data_dir / "bridge.log").open("wb")
            )
            ctx = multiprocessing.get_context("spawn")
            ready, stop, hops = ctx.Event(), ctx.Event(), ctx.Queue()
            farm = ctx.Process(target=_farm_process, args=(mqtt.port, server_key_b64, ready, stop, hops), name="farm")
            farm.start()
            try:
                shares = CpuShares({"bridge": server.pid, "farm": farm.pid, "broker": mqtt.pid}, postgres=True)
                backend_key = read_rsa_public_key(backend_public_path)
                setup = _Setup(
                    port,
                    bridges,
                    server.pid,
                    mqtt,
                    db,
                    token,
                    ready,
                    stop,
                    hops,
                    hop_ceiling,
                    commit_ms,
                    shares,
                    backend_key,
                )
                return await _run(setup, notes, rate, duration_s, devices)
            finally:
                stop.set()
                farm.join(10)
                if farm.is_alive():
                    farm.terminate()
                server.terminate()
                await server.wait()


async def _wait_up(port: int, bridges: int, ready: Event) -> None:
    """Every bridge process answering, and the farm connected."""
    await wait_http(port, instances=bridges, timeout_s=START_TIMEOUT_S)
    if not await asyncio.to_thread(ready.wait, START_TIMEOUT_S):
        raise BenchError("the device farm did not connect")


@dataclass(frozen=True, slots=True)
class _Setup:
    port: int
    bridges: int
    server_pid: int
    mqtt: Broker
    db: Database
    token: str
    ready: Event
    stop: Event
    hops: Queue[dict[str, int]]
    hop_ceiling: dict[str, float | None]
    commit_ms: dict[str, float | None]
    shares: CpuShares
    backend_key: RSAPublicKey


async def _run(
    setup: _Setup, notes: list[tuple[bytes, dict[str, str]]], rate: float, duration_s: float, devices: int
) -> AnnounceFigures:
    port, bridges = setup.port, setup.bridges
    await _wait_up(port, bridges, setup.ready)
    # Bound as the payment backend binds them: its service account, through the API.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for i in range(devices):
            bound = await client.post(
                "/api/v1/bindings",
                json={"device_id": f"BD{i:05d}", "merchant_id": f"BM{i:05d}"},
                headers={"authorization": f"Bearer {setup.token}"},
            )
            bound.raise_for_status()
    # Each device says 设备绑定成功; a merchant is bound long before the first payment, so the
    # timed run starts once those alerts are acked (or their TTL has passed).
    left = await alerts_settled(setup.db.url)
    print(
        f"{bridges} bridge process(es) up, {devices:,} devices bound ({left} bind alerts unacked);"
        f" sending {len(notes):,} at {rate:,.0f}/s",
        flush=True,
    )
    setup.shares.start()
    cpu_before = process_tree_cpu_s(setup.server_pid)
    offered = await offer(
        port,
        CONNECTIONS * bridges,
        [("notify", ("POST", "/api/v1/notifications/backend", b, h)) for b, h in notes],
        rate,
    )
    answers, sending_s = offered.answers_ms.get("notify", []), offered.seconds
    errors = offered.errors + sum(n for status, n in offered.statuses.items() if status >= 300)
    print(f"sent in {sending_s:.1f} s; waiting up to {SETTLE_S:.0f} s for the acks", flush=True)
    delivered, missed, pending, span, latencies, batch = await results(setup.db.url)
    cpu_s = process_tree_cpu_s(setup.server_pid) - cpu_before
    shares = setup.shares.line()
    print("measuring the floor (verify, sign, batched write) in this process", flush=True)
    floor = await asyncio.to_thread(measure_floor, notes, setup.backend_key, setup.db.url, round(batch))
    setup.stop.set()
    hops = await asyncio.to_thread(setup.hops.get, True, 30)
    bridge_part = [latency - hops[pid] for pid, latency in latencies.items() if pid in hops]
    return AnnounceFigures(
        bridges=bridges,
        devices=devices,
        broker=setup.mqtt.description,
        database=setup.db.description,
        offered_per_s=rate,
        duration_s=duration_s,
        sent=len(notes),
        answered_ok=len(answers),
        answer_errors=errors,
        achieved_per_s=len(answers) / max(span, sending_s, 1e-9),
        answer_ms=percentiles(answers),
        latency_ms=percentiles(list(latencies.values())),
        bridge_part_ms=percentiles(bridge_part),
        hop_ms=percentiles([float(h) for h in hops.values()]),
        delivered=delivered,
        missed=missed,
        pending=pending,
        bridge_cpu_us_per_notification=cpu_s / max(len(answers), 1) * 1e6,
        ceiling_broker_hop_ms=setup.hop_ceiling,
        ceiling_commit_ms=setup.commit_ms,
        payments_per_write=batch,
        floor=floor,
        cpu_shares=shares,
    )
