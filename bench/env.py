"""Where a scenario runs: which broker, which database, and the machine they are on.

    async with broker("private") as mqtt, database("machine") as db:
        ...  # mqtt.port, mqtt.description; db.url, db.description (version, Timescale or not)

Brokers:
- `private` (default): the machine's Mosquitto binary started on a free port with the limits of
  deploy/mosquitto.conf (queue sizes, in-flight window, TCP_NODELAY), as production runs it;
- `machine`: the Mosquitto service already running on 127.0.0.1:1883, as it is configured;
- `embedded`: the embedded amqtt broker (`haodian broker`) in a process of its own. It has no
  shared subscriptions, so scenarios with several processes refuse it.

Databases: `machine` (a fresh database on the PostgreSQL at 127.0.0.1:5432, or the server
HAODIAN_TEST_DATABASE_URL names, dropped afterwards)
or `embedded` (a private PostgreSQL from the pgserver package in a temporary folder).

The benchmarks' one error, `BenchError`, is what a scenario cannot set up or measure (a broker
that will not start, a part that never answers); `python -m bench` prints it in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import psycopg
from psycopg import sql

from bench.stats import percentiles
from fleet_server.db import timescale
from fleet_server.db.pool import with_database
from haodian.embedded import EmbeddedDatabase
from simulators.mosquitto import MosquittoError, PrivateMosquitto
from simulators.netproxy import free_port


# The PostgreSQL `--database machine` creates its databases on: the machine's, or the server
# HAODIAN_TEST_DATABASE_URL names (as the tests do: tests/conftest.py).
def admin_url() -> str:
    return os.environ.get("HAODIAN_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"


MACHINE_MQTT = ("127.0.0.1", 1883)
DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto.conf"

BrokerKind = Literal["private", "machine", "embedded"]
DatabaseKind = Literal["machine", "embedded"]
BROKERS: tuple[BrokerKind, ...] = ("private", "machine", "embedded")
DATABASES: tuple[DatabaseKind, ...] = ("machine", "embedded")


class BenchError(Exception):
    """A benchmark cannot run as asked on this machine (a missing service or tool)."""


@dataclass(frozen=True, slots=True)
class Broker:
    kind: BrokerKind
    port: int
    description: str
    pid: int | None = None  # the broker's process, where known (for its memory)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def shared_subscriptions(self) -> bool:
        return self.kind != "embedded"


@dataclass(frozen=True, slots=True)
class Database:
    kind: DatabaseKind
    url: str
    description: str


def machine() -> dict[str, Any]:
    """Cores, memory, Python and OS of this machine."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def deploy_limits() -> list[str]:
    """The broker settings of deploy/mosquitto.conf that a private Mosquitto is started with."""
    text = DEPLOY_CONF.read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.startswith(("max_", "set_tcp_nodelay"))]


@contextlib.asynccontextmanager
async def broker(kind: BrokerKind) -> AsyncIterator[Broker]:
    if kind == "private":
        limits = deploy_limits()
        with tempfile.TemporaryDirectory(prefix="haodian-bench-mqtt-") as folder:
            try:
                private = PrivateMosquitto(Path(folder), config_lines=limits, persistence=False)
                await asyncio.to_thread(private.start)
            except MosquittoError as exc:
                raise BenchError(f"cannot start a private Mosquitto: {exc}") from exc
            try:
                description = f"private Mosquitto with deploy/mosquitto.conf ({', '.join(limits)})"
                yield Broker(kind, private.port, description, private.process.pid if private.process else None)
            finally:
                await asyncio.to_thread(private.stop)
    elif kind == "machine":
        if not await _reachable(*MACHINE_MQTT):
            raise BenchError(
                "no Mosquitto on 127.0.0.1:1883; start it with: mosquitto -d -c /etc/mosquitto/mosquitto.conf"
            )
        yield Broker(
            kind,
            MACHINE_MQTT[1],
            "the machine's Mosquitto on 127.0.0.1:1883, as configured there",
            _pid_of("mosquitto"),
        )
    else:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "haodian", "--log-level", "ERROR", "broker", "--port", str(port),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(200):
                if await _reachable("127.0.0.1", port):
                    break
                await asyncio.sleep(0.05)
            else:
                raise BenchError("the embedded broker (haodian broker) did not start")
            yield Broker(kind, port, "embedded amqtt broker (haodian broker), a process of its own", proc.pid)
        finally:
            proc.terminate()
            await proc.wait()


def _pid_of(program: str) -> int | None:
    """The oldest process running `program` (the system's service), if any."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text(encoding="utf-8").strip() == program:
                    found.append(int(entry.name))
    return min(found) if found else None


async def _reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def database(kind: DatabaseKind) -> AsyncIterator[Database]:
    if kind == "machine":
        async with fresh_database() as url:
            yield Database(kind, url, await _describe(url, "the PostgreSQL at {server}"))
    else:
        with tempfile.TemporaryDirectory(prefix="haodian-bench-pg-") as folder:
            async with EmbeddedDatabase(Path(folder) / "pg", "bench") as embedded:
                yield Database(kind, embedded.url, await _describe(embedded.url, "embedded PostgreSQL (pgserver)"))


async def _describe(url: str, where: str) -> str:
    """Which server, its version, and the telemetry storage the migrations will choose there, why."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        server = f"{conn.info.host}:{conn.info.port}"
        cur = await conn.execute("SELECT current_setting('server_version')")
        version = ((await cur.fetchone()) or ("?",))[0]
        decision = timescale.decide(await timescale.probe(conn))
    return f"{where.format(server=server)}, PostgreSQL {version}, {decision.reason} (rollups: our tables)"


@contextlib.asynccontextmanager
async def fresh_database(admin: str | None = None) -> AsyncIterator[str]:
    admin = admin or admin_url()
    name = f"haodian_bench_{uuid.uuid4().hex[:10]}"
    try:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        raise BenchError(
            f"cannot reach PostgreSQL at {admin} ({exc}); start it with:"
            " pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ) from exc
    try:
        yield with_database(admin, name)
    finally:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def broker_hop(port: int, rate: float, seconds: float) -> dict[str, float | None]:
    """The ceiling of a broker hop: a minimal publisher and subscriber on the broker at `port`,
    announce-sized QoS 1 messages at `rate` for `seconds`; publish -> receipt in ms, with
    nothing of ours in the way."""
    quiet = logging.getLogger("bench.ceiling")
    quiet.setLevel(logging.ERROR)
    payload_pad = "x" * 420  # an announce is about 450 bytes
    hops: list[float] = []
    total = int(rate * seconds)
    done = asyncio.Event()
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier="bench-ceiling-sub", username="bench-ceiling-sub",
                       logger=quiet, socket_options=nodelay(), max_inflight_messages=1000) as sub,
        aiomqtt.Client("127.0.0.1", port, identifier="bench-ceiling-pub", username="bench-ceiling-pub",
                       logger=quiet, socket_options=nodelay(), max_inflight_messages=1000) as pub,
    ):  # fmt: skip
        await sub.subscribe("bench/ceiling/#", qos=1)

        async def receive() -> None:
            async for message in sub.messages:
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b"{}"
                hops.append((time.perf_counter() - json.loads(payload)["t"]) * 1000)
                if len(hops) >= total:
                    done.set()

        receiver = asyncio.create_task(receive())
        started = time.perf_counter()
        for n in range(total):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = json.dumps({"t": time.perf_counter(), "pad": payload_pad})
            pub._client.publish(f"bench/ceiling/{n % 1000}", body, qos=1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 10)
        receiver.cancel()
    return percentiles(hops)


def nodelay() -> tuple[tuple[int, int, int], ...]:
    """Socket options for a benchmark's own MQTT clients: no Nagle, as our servers and devices."""
    return ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
