"""Processes for tests that start and stop servers: `haodian` subcommands as real processes
(`Processes`), service accounts made with `haodian users`, and what /proc says of a pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent does not count)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def children(pid: int) -> list[int]:
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [child for child in pids if (fields := _stat(child)) is not None and int(fields[1]) == pid]


class Processes:
    """Start `haodian` subcommands as real processes; stop them all (SIGTERM, then kill)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # One log per process: a restarted one must not write over its predecessor's last words.
        log_path = self.folder / f"{name}.{sum(n == name for n, _, _ in self.started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "haodian.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=self.folder,
            )
        self.started.append((name, proc, log_path))
        return proc

    def start_agent(
        self, device_id: str, *, broker_port: int, server_key: str, state_dir: Path, audio_dir: Path
    ) -> subprocess.Popen[bytes]:
        """`haodian agent run` as a device: health every second, speech to WAV files in `audio_dir`."""
        return self.start(
            device_id,
            "agent",
            "run",
            "--device-id",
            device_id,
            "--broker-url",
            f"mqtt://127.0.0.1:{broker_port}",
            "--server-key",
            server_key,
            "--state-dir",
            str(state_dir),
            "--audio-dir",
            str(audio_dir),
            "--health-interval",
            "1",
        )

    def kill(self, name: str) -> None:
        """kill -9 the newest process started as `name`: what a crash or a power cut does."""
        for started_name, proc, _ in reversed(self.started):
            if started_name == name and proc.poll() is None:
                proc.kill()
                proc.wait(10)
                return
        raise AssertionError(f"no running process named {name}")

    def check_alive(self) -> None:
        """Each name's newest process still runs (one killed and started again is its new one)."""
        newest = {name: (proc, log_path) for name, proc, log_path in self.started}
        for name, (proc, log_path) in newest.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in reversed(self.started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{path.read_text()[-2000:]}" for name, _, path in self.started)


def cli_token(env: dict[str, str], cwd: Path, login: str, role: str) -> str:
    """A service account in `role` and an API token for it, through `haodian users`."""

    def users(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "haodian.cli", "users", *args],
            env={**os.environ, **env},
            cwd=cwd,
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return done.stdout.decode()

    assert "created" in users("add", login, "--role", role, "--service")
    return users("token", login, "--days", "1").strip()
