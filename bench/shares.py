"""Who used the machine's CPU during a run: the part measured and the load around it.

    shares = CpuShares({"bridge": bridge_pid, "farm": farm_pid, "broker": broker_pid}, postgres=True)
    shares.start(); ...run...; print(shares.line(seconds))

Each named process counts with its descendants; "generator" is this process; "postgres" every
process named postgres on the machine (the server's backends, whoever they serve), so a
benchmark's own load cannot hide inside the figure it reports.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.stats import process_cpu_s, process_tree_cpu_s


def postgres_cpu_s() -> dict[int, float]:
    """CPU seconds so far of each process named postgres."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = process_cpu_s(int(entry.name))
            except OSError:
                continue
    return found


class CpuShares:
    def __init__(self, pids: dict[str, int | None], *, postgres: bool) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._postgres = postgres
        self._before: dict[str, float] = {}
        self._pg_before: dict[int, float] = {}
        self._started = 0.0

    def _now(self) -> dict[str, float]:
        now = {name: process_tree_cpu_s(pid) for name, pid in self._pids.items()}
        now["generator"] = time.process_time()
        return now

    def start(self) -> None:
        self._before, self._started = self._now(), time.monotonic()
        self._pg_before = postgres_cpu_s() if self._postgres else {}

    def used_s(self) -> dict[str, float]:
        """CPU seconds of each since `start` (PostgreSQL: of its processes alive at the end)."""
        used = {name: spent - self._before.get(name, 0.0) for name, spent in self._now().items()}
        if self._postgres:
            used["postgres"] = sum(s - self._pg_before.get(pid, 0.0) for pid, s in postgres_cpu_s().items())
        return used

    def line(self) -> str:
        seconds = max(time.monotonic() - self._started, 1e-9)
        used = self.used_s()
        cores = os.cpu_count() or 1
        parts = ", ".join(f"{name} {spent / seconds * 100:.0f} %" for name, spent in used.items())
        total = sum(used.values()) / seconds * 100
        return f"CPU over the run, % of one core: {parts}; {total:.0f} % of {cores * 100} %"
