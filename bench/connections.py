"""`connections`: how many device connections the broker and our simulators hold at once.

`processes` simulator processes each open their share of `devices` MQTT sessions, each one the
edge agent's own `Link` (persistent session, last will on the presence topic, 30 s keepalive,
TCP_NODELAY), 200 connecting at a time; then hold them all for HOLD_S and count how many are
still up. Figures: connections held, failures, time to connect them all, the simulators' memory
per connection (RSS growth of the processes / connections: the agent side's cost of one
session) and the broker's memory per connection where its process is known. The ceiling on the
same machine: the open-files limit each process runs under (a connection is a file descriptor).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

import uvloop

from bench.env import BenchError, BrokerKind, broker
from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from haodian import logs
from mqtt_link.link import Link

HOLD_S = 10.0
CONCURRENT_CONNECTS = 200


def _rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _raise_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def _simulator(
    port: int,
    first: int,
    count: int,
    connected: Synchronized[int],
    result: Synchronized[int],
    done: Event,
    gates: tuple[Event, Event],
) -> None:
    _raise_files_limit()
    logs.configure(json=True, level="WARNING", file=Path(tempfile.gettempdir()) / "haodian-bench-connections.log")
    ready, go = gates

    async def nothing(_: object) -> None:
        return None

    async def run() -> None:
        # Imported and idle: the parent reads this process's memory now, then lets it connect.
        ready.set()
        await asyncio.to_thread(go.wait)
        endpoint = BrokerEndpoint(host="127.0.0.1", port=port)
        links: list[Link] = []
        gate = asyncio.Semaphore(CONCURRENT_CONNECTS)

        async def open_one(n: int) -> None:
            device = f"CONN{n:07d}"
            link = Link(
                endpoint,
                client_id=device,
                subscriptions=[topics.down(device, topics.Down.ANNOUNCE)],
                on_message=nothing,
            )
            links.append(link)
            async with gate:
                await link.__aenter__()
                with contextlib.suppress(TimeoutError):
                    await link.wait_connected(60)
            if link.connected.is_set():
                with connected.get_lock():
                    connected.value += 1

        await asyncio.gather(*(open_one(first + n) for n in range(count)))
        await asyncio.to_thread(done.wait)
        up = sum(1 for link in links if link.connected.is_set())
        with result.get_lock():
            result.value += up
        # Memory per connection is read by the parent while everything is held; report ours.
        for link in links:
            await link.close()

    uvloop.run(run())


@dataclass(frozen=True, slots=True)
class ConnectionFigures:
    broker: str
    devices: int
    processes: int
    connected: int
    held: int
    connect_s: float
    simulator_kb_per_connection: float
    broker_kb_per_connection: float | None
    files_limit: int

    def lines(self) -> list[str]:
        broker_kb = f"{self.broker_kb_per_connection:.1f} KB" if self.broker_kb_per_connection is not None else "-"
        return [
            f"broker: {self.broker}",
            f"devices {self.devices:,} in {self.processes} simulator process(es): connected {self.connected:,}"
            f" in {self.connect_s:.1f} s; still up after {HOLD_S:.0f} s: {self.held:,}",
            f"memory per connection: simulators (agent-side Link) {self.simulator_kb_per_connection:.1f} KB,"
            f" broker {broker_kb}",
            f"ceiling: open files per process {self.files_limit:,} (one descriptor per connection)",
        ]


async def measure_connections(
    *, devices: int, processes: int = 2, broker_kind: BrokerKind = "private"
) -> ConnectionFigures:
    files_limit = _raise_files_limit()  # a private Mosquitto inherits it
    async with broker(broker_kind) as mqtt:
        ctx = multiprocessing.get_context("spawn")
        connected, held, done, go = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Event(), ctx.Event()
        share = -(-devices // processes)
        broker_before = _rss_kb(mqtt.pid) if mqtt.pid else None
        readies: list[Event] = []
        workers: list[multiprocessing.process.BaseProcess] = []
        for n in range(processes):
            count = min(share, devices - n * share)
            if count <= 0:
                break
            readies.append(ctx.Event())
            args = (mqtt.port, n * share, count, connected, held, done, (readies[-1], go))
            workers.append(ctx.Process(target=_simulator, args=args))
        for worker in workers:
            worker.start()
        for ready, worker in zip(readies, workers, strict=True):
            while not await asyncio.to_thread(ready.wait, 1.0):
                if not worker.is_alive():
                    raise BenchError(f"a simulator process failed (exit code {worker.exitcode})")
        baseline = sum(_rss_kb(w.pid) for w in workers if w.pid)
        go.set()
        started = time.perf_counter()
        last, last_change = 0, time.perf_counter()
        print(f"connecting {devices:,} devices from {len(workers)} process(es)", flush=True)
        while connected.value < devices and time.perf_counter() - last_change < 30:
            await asyncio.sleep(0.5)
            if not all(w.is_alive() for w in workers):
                raise BenchError("a simulator process failed while connecting")
            if connected.value != last:
                last, last_change = connected.value, time.perf_counter()
                print(f"  {time.perf_counter() - started:5.1f} s: {last:,} connected", flush=True)
        connect_s = last_change - started
        await asyncio.sleep(HOLD_S)
        simulators_kb = sum(_rss_kb(w.pid) for w in workers if w.pid) - baseline
        broker_kb = (_rss_kb(mqtt.pid) - broker_before) if mqtt.pid and broker_before is not None else None
        done.set()
        for worker in workers:
            await asyncio.to_thread(worker.join, 60)
    up = max(connected.value, 1)
    return ConnectionFigures(
        broker=mqtt.description,
        devices=devices,
        processes=len(workers),
        connected=connected.value,
        held=held.value,
        connect_s=connect_s,
        simulator_kb_per_connection=simulators_kb / up,
        broker_kb_per_connection=broker_kb / up if broker_kb is not None else None,
        files_limit=files_limit,
    )
