"""Payment bridge under load: signed notifications in over HTTP at a steady rate, announces out
to simulated devices, acks back, on a private Mosquitto (deploy/mosquitto.conf limits) and the
machine's PostgreSQL.

Processes, as in production: `bridges` x `haodian server --parts bridge` (sharing the ack
stream with a shared subscription when more than one; the load generator spreads requests over
them as a load balancer would); a device farm, one MQTT client that stands in for `devices`
speakers (it subscribes to every device's announce topic, verifies each announce's Ed25519
signature and acks it `played` at once, so what is measured is the bridge, broker and database,
not audio); and this process, which sends the backend's RSA2-signed notifications (signed before
the timed run: signing is the backend's cost, not ours).

Figures: notifications answered per second (achieved against offered), the backend's answer
time (from when each notification was due, so queueing in the sender counts), and
notification received → playback start (the farm's ack time) p50/p95/p99/max, from
the database; deliveries played / missed / still pending.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

import aiomqtt
import httpx
import psycopg

from bench.fleet import BenchError, fresh_database, private_mosquitto
from firmware_protocols import topics
from firmware_protocols.messages import Ack, AckStatus, Announce
from firmware_protocols.signing import Verifier, decode_public_key, encode_public_key
from fleet_server.auth.roles import Role
from fleet_server.auth.store import AuthStore
from fleet_server.db import open_pool
from haodian.embedded import free_port
from haodian.keys import dev_key_paths, ensure_dev_keys, read_rsa_private_key, read_signing_key
from simulators.backend import PaymentBackend

START_TIMEOUT_S = 60.0
SETTLE_S = 30.0
# Keep-alive connections per bridge, as a backend's HTTP client pool would hold.
CONNECTIONS = 64


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def _farm_process(port: int, server_key_b64: str, ready: Event) -> None:
    """Every device at once: verify each announce and ack it as played."""
    quiet = logging.getLogger("bench.farm")
    quiet.setLevel(logging.ERROR)
    verifier = Verifier([decode_public_key(server_key_b64)])

    async def run() -> None:
        pending: set[asyncio.Task[None]] = set()
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="bench-farm", max_inflight_messages=1000, logger=quiet
        ) as client:
            await client.subscribe(
                f"{topics.ROOT}/{topics.VERSION}/+/{topics.Direction.DOWN}/{topics.Down.ANNOUNCE}", qos=1
            )
            ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                announce = Announce.model_validate_json(payload)
                verifier.verify(announce)  # a speaker's work; a bad one would raise and end the farm
                now = int(time.time() * 1000)
                ack = Ack(
                    device_id=announce.device_id,
                    ts=now,
                    payment_id=announce.payment_id,
                    status=AckStatus.PLAYED,
                    received_at=now,
                    play_started_at=now,
                )
                task = asyncio.create_task(
                    client.publish(topics.up(announce.device_id, topics.Up.ACK), ack.model_dump_json(), qos=1)
                )
                pending.add(task)
                task.add_done_callback(pending.discard)

    asyncio.run(run())


@dataclass(frozen=True, slots=True)
class BridgeFigures:
    bridges: int
    devices: int
    offered_per_s: float
    duration_s: float
    sent: int
    answered_ok: int
    answer_errors: int
    achieved_per_s: float
    answer_ms: dict[str, float | None]
    latency_ms: dict[str, float | None]
    delivered: int
    missed: int
    pending: int

    def lines(self) -> list[str]:
        def fmt(p: dict[str, float | None]) -> str:
            return "  ".join(f"{k} {v:.1f}" for k, v in p.items() if v is not None)

        return [
            f"bridges {self.bridges}, devices {self.devices},"
            f" offered {self.offered_per_s:,.0f}/s for {self.duration_s:.0f} s",
            f"notifications sent {self.sent:,}, answered 200 {self.answered_ok:,}, errors {self.answer_errors:,};"
            f" achieved {self.achieved_per_s:,.0f}/s",
            f"backend's answer time (ms): {fmt(self.answer_ms)}",
            f"notification received -> playback start (ms): {fmt(self.latency_ms)}",
            f"deliveries played {self.delivered:,}, missed {self.missed:,}, still pending {self.pending:,}",
        ]


async def measure_bridge(*, rate: float, duration_s: float, devices: int = 1000, bridges: int = 1) -> BridgeFigures:
    total = int(rate * duration_s)
    with tempfile.TemporaryDirectory(prefix="haodian-bench-bridge-") as folder:
        data_dir = Path(folder)
        ensure_dev_keys(data_dir)
        signing_path, backend_private_path, backend_public_path = dev_key_paths(data_dir)
        server_key_b64 = encode_public_key(read_signing_key(signing_path).public_key())
        merchants = [f"BM{i:05d}" for i in range(devices)]
        backend = PaymentBackend(read_rsa_private_key(backend_private_path), "http://unused", merchants)
        print(f"signing {total:,} notifications (the backend's work, before the timed run)", flush=True)
        notes = [backend.notification(merchant_id=merchants[i % devices]) for i in range(total)]
        async with private_mosquitto() as (mqtt_port, _), fresh_database() as database_url:
            ports = [free_port() for _ in range(bridges)]
            env = {
                **os.environ,
                "HAODIAN_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
                "HAODIAN_DATABASE_URL": database_url,
                "HAODIAN_DATA_DIR": str(data_dir),
                "HAODIAN_SIGNING_KEY_FILE": str(signing_path),
                "HAODIAN_BACKEND_PUBLIC_KEY_FILE": str(backend_public_path),
                "HAODIAN_LOG_LEVEL": "WARNING",
            }
            if bridges > 1:
                env["HAODIAN_MQTT_SHARE_GROUP"] = "bench"
            procs = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "haodian.cli",
                    "server",
                    "--parts",
                    "bridge",
                    "--port",
                    str(port),
                    env={**env, "HAODIAN_MQTT_CLIENT_PREFIX": f"bench-b{n}"},
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=(data_dir / f"bridge{n}.log").open("wb"),
                )
                for n, port in enumerate(ports)
            ]
            ready = multiprocessing.get_context("spawn").Event()
            farm = multiprocessing.get_context("spawn").Process(
                target=_farm_process, args=(mqtt_port, server_key_b64, ready), name="farm"
            )
            farm.start()
            try:
                return await _run(ports, notes, rate, duration_s, devices, database_url, ready)
            finally:
                farm.terminate()
                farm.join(10)
                for proc in procs:
                    proc.terminate()
                    await proc.wait()


async def _wait_up(clients: list[httpx.AsyncClient], ready: Event) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for client in clients:
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("a bridge did not start; see its log in the data folder")
            await asyncio.sleep(0.2)
    if not await asyncio.to_thread(ready.wait, START_TIMEOUT_S):
        raise BenchError("the device farm did not connect")


class _Connection:
    """One keep-alive HTTP/1.1 connection, the leanest client there is: the load generator must
    not be what limits the rate (httpx cost ~10x more CPU per request here)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body
        )
        await self._writer.drain()
        status_line = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self._reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def _send_all(
    ports: list[int], notes: list[tuple[bytes, dict[str, str]]], rate: float
) -> tuple[list[float], int, float]:
    """Offer the notifications at `rate` (queued at their due time, spread over the bridges) to
    CONNECTIONS keep-alive connections per bridge; (answer times in ms from the due time, errors,
    seconds taken)."""
    answers: list[float] = []
    errors = 0
    queue: asyncio.Queue[tuple[float, int, bytes, dict[str, str]] | None] = asyncio.Queue()

    async def worker(port: int) -> None:
        nonlocal errors
        connection = _Connection(port)
        try:
            while (item := await queue.get()) is not None:
                due, _, body, headers = item
                try:
                    status = await connection.post("/api/v1/notifications/backend", body, headers)
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    errors += 1
                    connection.close()
                    connection = _Connection(port)
                    continue
                if status == 200:
                    answers.append((time.perf_counter() - due) * 1000)
                else:
                    errors += 1
        finally:
            connection.close()

    workers = [asyncio.create_task(worker(port)) for port in ports for _ in range(CONNECTIONS)]
    started = time.perf_counter()
    for i, (body, headers) in enumerate(notes):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, i, body, headers))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return answers, errors, time.perf_counter() - started


async def _results(database_url: str) -> tuple[int, int, int, float, list[float]]:
    """After the acks settle: (played, missed, pending, seconds between first and last payment,
    latencies in ms)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        settle_deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < settle_deadline:
            cur = await conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'")
            if (await cur.fetchone()) == (0,):
                break
            await asyncio.sleep(0.5)
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE d.status = 'played'), count(*) FILTER (WHERE d.status = 'missed'),"
            " count(*) FILTER (WHERE d.status = 'pending'),"
            " date_part('epoch', max(p.received_at) - min(p.received_at))"
            " FROM deliveries d JOIN payments p USING (payment_id)"
        )
        delivered, missed, pending, span = (await cur.fetchone()) or (0, 0, 0, 0.0)
        cur = await conn.execute(
            "SELECT date_part('epoch', d.play_started_at - p.received_at) * 1000"
            " FROM deliveries d JOIN payments p USING (payment_id) WHERE d.status = 'played'"
        )
        latencies = [float(row[0]) for row in await cur.fetchall()]
    return delivered, missed, pending, float(span or 0.0), latencies


async def _run(
    ports: list[int],
    notes: list[tuple[bytes, dict[str, str]]],
    rate: float,
    duration_s: float,
    devices: int,
    database_url: str,
    ready: Event,
) -> BridgeFigures:
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) for port in ports]
    try:
        await _wait_up(clients, ready)
        # Bound as the payment backend binds them: its service account, through the API.
        async with open_pool(database_url, max_size=1) as pool:
            token = await AuthStore(pool).service_token("bench-backend", Role.BACKEND)
        for i in range(devices):
            bound = await clients[0].post(
                "/api/v1/bindings",
                json={"device_id": f"BD{i:05d}", "merchant_id": f"BM{i:05d}"},
                headers={"authorization": f"Bearer {token}"},
            )
            bound.raise_for_status()
        print(
            f"{len(ports)} bridge(s) up, {devices:,} devices bound; sending {len(notes):,} at {rate:,.0f}/s", flush=True
        )
        answers, errors, sending_s = await _send_all(ports, notes, rate)
        print(f"sent in {sending_s:.1f} s; waiting up to {SETTLE_S:.0f} s for the acks", flush=True)
        delivered, missed, pending, span, latencies = await _results(database_url)
    finally:
        for client in clients:
            await client.aclose()
    return BridgeFigures(
        bridges=len(ports),
        devices=devices,
        offered_per_s=rate,
        duration_s=duration_s,
        sent=len(notes),
        answered_ok=len(answers),
        answer_errors=errors,
        achieved_per_s=len(answers) / max(span, sending_s, 1e-9),
        answer_ms=_percentiles(answers),
        latency_ms=_percentiles(latencies),
        delivered=delivered,
        missed=missed,
        pending=pending,
    )
