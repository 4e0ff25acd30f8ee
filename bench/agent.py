"""`agent`: one `haodian agent run` at rest (memory, CPU), then its announce path.

The agent runs as on a device: from a virtual environment holding only the agent's own
dependencies (`pip install .`, no server or development extras, made once under
`.haodian/bench/agent-venv`), with voice clips to WAV files, a simulated modem and the default
60 s health interval, connected to a broker: the machine's Mosquitto when it answers on
127.0.0.1:1883, else an embedded amqtt broker started in a second process. `haodian agent run`
is two processes (the launcher, which boots the agent from its active slot and watches it, and
the agent), and every figure counts both: a device holds both. After a warm-up, CPU is the
scheduler's nanosecond account of all their threads over the window (/proc/<pid>/task/*/schedstat),
and memory is VmRSS and the proportional set size (/proc/<pid>/smaps_rollup) at the end, summed,
with each process's RSS apart; also the peak (VmHWM, summed).

Then the announce path: ANNOUNCES announces signed with the key the agent trusts are published
to it one by one, PACE_S apart (so none waits behind another's audio), and each one's ack read
back: publish -> playback start (the agent's own `play_started_at`: verify, dedup on disk,
render the words, start the sink) and the CPU per announce (the same account over the burst,
less the idle rate). The ceiling: the same broker's hop with a minimal client (publish ->
receipt of a message of the same size).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from bench.env import broker_hop
from bench.stats import fmt, percentiles, process_tree
from firmware_protocols import topics
from firmware_protocols.messages import Ack, AckStatus, Announce, Channel
from firmware_protocols.signing import Signer, encode_public_key
from simulators.netproxy import free_port

ANNOUNCES = 40
PACE_S = 0.5


@dataclass(frozen=True, slots=True)
class Footprint:
    broker: str
    warmup_s: float
    window_s: float
    rss_kb: int  # of the launcher and the agent it runs together, as the device holds them
    pss_kb: int | None
    peak_rss_kb: int
    rss_kb_by_process: dict[str, int]
    cpu_pct: float
    python: str
    announces: int
    played: int
    announce_to_play_ms: dict[str, float | None]
    cpu_ms_per_announce: float
    ceiling_broker_hop_ms: dict[str, float | None]

    def lines(self) -> list[str]:
        return [
            f"broker: {self.broker}; the agent runs on Python {self.python} with only its own dependencies",
            f"idle, the launcher and the agent together: RSS {self.rss_kb / 1024:.1f} MB,"
            f" PSS {(self.pss_kb or 0) / 1024:.1f} MB, peak RSS {self.peak_rss_kb / 1024:.1f} MB,"
            f" CPU {self.cpu_pct:.2f} % of one core over {self.window_s} s",
            "  RSS by process: "
            + ", ".join(f"{name} {kb / 1024:.1f} MB" for name, kb in self.rss_kb_by_process.items()),
            f"announce path: {self.played}/{self.announces} played; publish -> playback start (ms):"
            f" {fmt(self.announce_to_play_ms)}",
            f"announce path CPU: {self.cpu_ms_per_announce:.2f} ms per announce (both processes, idle rate taken off)",
            f"ceiling, the same broker's hop with a minimal client (ms): {fmt(self.ceiling_broker_hop_ms)}",
        ]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _pss_kb(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def _cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` and its descendants (the launcher and the agent it runs)
    in nanoseconds, the scheduler's own account: a burst of announces uses less than the 10 ms a
    clock tick counts, so ticks would say nothing."""
    total = 0
    for process in process_tree(pid):
        for task in Path(f"/proc/{process}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int(task.joinpath("schedstat").read_text().split()[0])
    return total


def _tree_kb(pid: int, key: str) -> int:
    return sum(_status_kb(process, key) for process in process_tree(pid))


AGENT_VENV = Path(".haodian/bench/agent-venv")
PROJECT = Path(__file__).resolve().parent.parent


def agent_python() -> Path:
    """The Python of a device-like install: the project with its base dependencies only."""
    python = AGENT_VENV / "bin" / "python"
    stamp = AGENT_VENV / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (PROJECT / "pyproject.toml").stat().st_mtime:
        print(f"making {AGENT_VENV} with the agent's dependencies only (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(AGENT_VENV)], check=True)  # noqa: S603
        subprocess.run(  # noqa: S603 - pip on our own project
            [str(python), "-m", "pip", "install", "--quiet", str(PROJECT)], check=True, stderr=subprocess.DEVNULL
        )
        stamp.touch()
    return python


def _client(port: int, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
    client.username_pw_set(name)
    client.connect("127.0.0.1", port)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def _announce_burst(port: int, device: str, signer: Signer) -> list[float]:
    """Publish ANNOUNCES signed announces to the agent, PACE_S apart; publish -> playback start
    (ms) of each one acked as played."""
    sent: dict[str, float] = {}
    played: list[float] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            ack = Ack.model_validate_json(message.payload)
            if ack.status is AckStatus.PLAYED and ack.payment_id in sent and ack.play_started_at:
                played.append(ack.play_started_at - sent[ack.payment_id])
        if len(played) >= ANNOUNCES:
            done.set()

    client = _client(port, f"bench-agent-server-{device}")
    client.on_message = on_message
    client.subscribe(topics.up(device, topics.Up.ACK), qos=1)
    client.loop_start()
    try:
        time.sleep(0.5)
        for n in range(ANNOUNCES):
            now = int(time.time() * 1000)
            payment_id = f"PB{device}{n:04d}"
            announce = signer.sign(
                Announce(
                    device_id=device, ts=now, payment_id=payment_id, amount_fen=1250 + n, channel=Channel.WECHAT,
                    paid_at=now, issued_at=now, ttl_s=120, key_id=signer.key_id,
                )
            )  # fmt: skip
            sent[payment_id] = time.time() * 1000
            client.publish(topics.down(device, topics.Down.ANNOUNCE), announce.to_json(), qos=1)
            time.sleep(PACE_S)
        done.wait(30)
    finally:
        client.loop_stop()
        client.disconnect()
    return played


def measure(*, warmup_s: float = 15.0, window_s: float = 60.0) -> Footprint:
    python = agent_python()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if _port_open(1883):
            broker, port = "mosquitto 127.0.0.1:1883", 1883
        else:
            port = free_port()
            processes.append(
                subprocess.Popen(  # noqa: S603 - our own command
                    [sys.executable, "-m", "haodian", "broker", "--port", str(port)], stdout=subprocess.DEVNULL
                )
            )
            broker = f"embedded amqtt 127.0.0.1:{port}"
            for _ in range(100):
                if _port_open(port):
                    break
                time.sleep(0.1)
        with tempfile.TemporaryDirectory(prefix="haodian-footprint-") as tmp:
            server_key = Ed25519PrivateKey.generate()
            key = encode_public_key(server_key.public_key())
            device = "FOOT" + base64.b32encode(os.urandom(5)).decode()
            agent = subprocess.Popen(  # noqa: S603 - our own command
                [
                    str(python),
                    "-m",
                    "haodian",
                    "--log-level",
                    "WARNING",
                    "agent",
                    "run",
                    "--device-id",
                    device,
                    "--broker-url",
                    f"mqtt://127.0.0.1:{port}",
                    "--server-key",
                    key,
                    "--state-dir",
                    tmp,
                ],
                stdout=subprocess.DEVNULL,
            )
            processes.append(agent)
            time.sleep(warmup_s)
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited with {agent.returncode} during warm-up")
            start_ns, start = _cpu_ns(agent.pid), time.monotonic()
            time.sleep(window_s)
            idle_ns, elapsed = _cpu_ns(agent.pid) - start_ns, time.monotonic() - start
            idle_ns_per_s = idle_ns / elapsed
            tree = process_tree(agent.pid)
            rss_kb, peak_kb = _tree_kb(agent.pid, "VmRSS"), _tree_kb(agent.pid, "VmHWM")
            pss = [_pss_kb(process) for process in tree]
            pss_kb = None if None in pss else sum(kb or 0 for kb in pss)
            by_process = {"launcher": _status_kb(tree[0], "VmRSS")} | {
                f"agent {process}" if len(tree) > 2 else "agent": _status_kb(process, "VmRSS") for process in tree[1:]
            }
            burst_ns, burst_s = _cpu_ns(agent.pid), time.monotonic()
            played = _announce_burst(port, device, Signer(server_key))
            burst_ns, burst_s = _cpu_ns(agent.pid) - burst_ns, time.monotonic() - burst_s
            busy_s = max(0.0, burst_ns - idle_ns_per_s * burst_s) / 1e9
            result = Footprint(
                broker=broker,
                warmup_s=warmup_s,
                window_s=round(elapsed, 1),
                rss_kb=rss_kb,
                pss_kb=pss_kb,
                peak_rss_kb=peak_kb,
                rss_kb_by_process=by_process,
                cpu_pct=round(100.0 * idle_ns / 1e9 / elapsed, 3),
                python=sys.version.split()[0],
                announces=ANNOUNCES,
                played=len(played),
                announce_to_play_ms=percentiles(played),
                cpu_ms_per_announce=busy_s * 1000 / max(len(played), 1),
                ceiling_broker_hop_ms=asyncio.run(broker_hop(port, rate=100, seconds=2)),
            )
            agent.terminate()
            agent.wait(10)
            return result
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
