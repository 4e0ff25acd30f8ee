"""A Mosquitto of one's own: a broker process on a free local port, that a test may kill -9 and
start again (its persistence survives), and that a benchmark starts with the production limits.

    broker = PrivateMosquitto(folder, config_lines=["max_queued_messages 3000000"])
    broker.start()
    ... broker.url() ... broker.kill(); broker.start() ...
    broker.stop()
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from simulators.errors import SimulatorError
from simulators.netproxy import free_port

START_TIMEOUT_S = 10.0


class MosquittoError(SimulatorError):
    """Mosquitto is not installed, or did not start listening."""


def _binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise MosquittoError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


class PrivateMosquitto:
    def __init__(
        self,
        folder: Path,
        *,
        config_lines: Sequence[str] = (),
        persistence: bool = True,
        listeners: Sequence[str] | None = None,
        port: int | None = None,
    ) -> None:
        """`listeners`: listener sections in place of the default open one on a free port (then
        `port` is the one to wait for at start)."""
        self.binary = _binary()
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        if listeners is None:
            listeners = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        # Run as the user who started it: as root, Mosquitto would otherwise switch to the
        # `mosquitto` user, which cannot read the owner-only key and password files of a test.
        lines = ["log_dest none", f"user {getpass.getuser()}", *listeners]
        if persistence:
            lines += ["persistence true", f"persistence_location {folder}/", "autosave_interval 1"]
        self.config.write_text("\n".join([*lines, *config_lines, ""]), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the broker and wait until it listens (blocking; call through a thread from async code)."""
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)])  # noqa: S603 - our binary, our config.
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise MosquittoError(f"private mosquitto did not listen on {self.port} within {START_TIMEOUT_S:.0f} s")

    def kill(self) -> None:
        """kill -9: what a crash or power cut does to the broker."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, how: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(how)
            self.process.wait(10)

    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"
