"""Which boot this is and why it happened, and one agent per state folder.

`boot.json` in the state folder says whether the last run stopped cleanly and whether it asked
for its own restart (a remote reboot, an OTA slot switch). A run that neither stopped cleanly
nor asked was cut short: a power cut, a crash, the watchdog. That is the boot reason the fleet
needs to tell a flaky power supply from a merchant switching the speaker off at night.

On a real board the kernel knows more (`/sys/class/watchdog/watchdog0/bootstatus`, the PMIC's
power-on reason); the record here is what any Linux has.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from edge_agent.errors import AgentError
from edge_agent.state_files import read_json, write_json
from firmware_protocols.messages import BootReason

log = structlog.get_logger(__name__)

_REQUESTABLE = frozenset({"command", "ota", "rollback"})


class StateFolderBusy(AgentError):
    """Another agent already runs on this state folder."""


@dataclass(frozen=True, slots=True)
class Boot:
    boot_id: str
    reason: BootReason
    started_ms: int


class BootRecord:
    """Reads the previous run's record at start and keeps this run's up to date."""

    def __init__(self, state_dir: Path, now_ms: int, *, reason: BootReason | None = None) -> None:
        """`reason`: what is already known of this boot (the boot control rolled back a slot)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self._path = state_dir / "boot.json"
        previous = self._read()
        found: BootReason = "unclean"
        if previous is None:
            found = "first_boot"
        elif previous.get("requested") in _REQUESTABLE:
            found = previous["requested"]
        elif previous.get("clean"):
            found = "clean"
        self.boot = Boot(uuid.uuid4().hex[:12], reason or found, now_ms)
        boots = previous.get("boots", 0) if previous else 0
        self.boots = (boots if isinstance(boots, int) else 0) + 1
        self._write(clean=False, requested=None)

    def _read(self) -> dict[str, Any] | None:
        if not self._path.exists():
            return None
        data = read_json(self._path)
        if data is None:
            log.warning("boot record unreadable; treating the last run as unclean", path=str(self._path))
        return data or {}

    def _write(self, *, clean: bool, requested: str | None) -> None:
        record = {"boot_id": self.boot.boot_id, "clean": clean, "requested": requested, "boots": self.boots}
        try:
            write_json(self._path, record)
        except OSError as exc:
            log.warning("cannot write the boot record", path=str(self._path), error=str(exc))

    def request_restart(self, reason: BootReason) -> None:
        """The next start is one this run asked for (`reason`), not a crash."""
        self._write(clean=True, requested=reason)

    def stopped_cleanly(self) -> None:
        self._write(clean=True, requested=None)


class Restart:
    """A restart this run asks for. The boot record learns it first, so the next start reports
    why rather than "unclean"; then whoever runs the agent is told (`requested`): the agent
    program exits 75 and the launcher starts it again from its slot, as a board would reboot."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.pending = False
        self.record: BootRecord | None = None  # this run's record, once the agent runs

    def ask(self, reason: BootReason) -> bool:
        """Record that the next start is asked for (`reason`); False if the agent is not running."""
        if self.record is None:
            return False
        self.record.request_restart(reason)
        self.pending = True
        return True


class StateLock:
    """An exclusive lock on the state folder: two agents on one folder would announce twice."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StateFolderBusy(f"an agent (pid {holder}) already runs on {self.path.parent}") from None
        self._file = handle
        # The pid is for people (who holds the lock); the lock is the flock. On a full disk the
        # write can fail: the agent runs on, locked, rather than exit (found by the disk-full fault
        # case, where a restarted agent died here with ENOSPC).
        pid = str(os.getpid()).encode()
        try:  # unbuffered, so that nothing is left to fail again when the file is closed
            os.pwrite(handle.fileno(), pid, 0)
            os.ftruncate(handle.fileno(), len(pid))
        except OSError as exc:
            log.warning("state folder locked; the pid could not be written", path=str(self.path), error=str(exc))

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def holder(self) -> int | None:
        """The pid of the agent holding the lock, or None when none does."""
        try:
            handle = self.path.open("r", encoding="utf-8")
        except FileNotFoundError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = handle.read().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
