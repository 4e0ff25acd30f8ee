"""The agent's footprint: resident memory and CPU of one `haodian agent run` process at rest.

The agent runs as its own process, as on a device: from a virtual environment holding only the
agent's own dependencies (`pip install .`, no server or development extras, made once under
`.haodian/bench/agent-venv`), with voice clips to WAV files, a simulated modem and the default
60 s health interval, connected to a broker: the machine's Mosquitto when it
answers on 127.0.0.1:1883, else an embedded amqtt broker started in a second process. After a
warm-up, CPU is the process's own user+system ticks over the window (from /proc/<pid>/stat) and
memory is VmRSS and the proportional set size (from /proc/<pid>/smaps_rollup) at the end; also
the peak (VmHWM).
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_protocols.signing import encode_public_key
from haodian.embedded import free_port

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Footprint:
    broker: str
    warmup_s: float
    window_s: float
    rss_kb: int
    pss_kb: int | None
    peak_rss_kb: int
    cpu_pct: float
    python: str


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


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


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
            key = encode_public_key(Ed25519PrivateKey.generate().public_key())
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
            start_ticks, start = _cpu_ticks(agent.pid), time.monotonic()
            time.sleep(window_s)
            ticks, elapsed = _cpu_ticks(agent.pid) - start_ticks, time.monotonic() - start
            result = Footprint(
                broker=broker,
                warmup_s=warmup_s,
                window_s=round(elapsed, 1),
                rss_kb=_status_kb(agent.pid, "VmRSS"),
                pss_kb=_pss_kb(agent.pid),
                peak_rss_kb=_status_kb(agent.pid, "VmHWM"),
                cpu_pct=round(100.0 * ticks / TICKS_PER_S / elapsed, 2),
                python=sys.version.split()[0],
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
