"""What the device's own Linux says about itself, from /proc and /sys, and a fake."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edge_agent.hardware.ports import SystemStatus


class LinuxSystemInfo:
    """Reads /proc/loadavg, /proc/stat, /proc/meminfo, the first thermal zone, the battery in
    /sys/class/power_supply and the disk.

    `root` lets tests point it at a prepared tree; `disk` is the folder whose filesystem holds the
    agent's state (a full disk stops the dedup window and the outbox).
    """

    def __init__(self, root: Path = Path("/"), disk: Path = Path("/")) -> None:
        self.root = root
        self.disk = disk
        self._cpu_last: tuple[int, int] | None = None

    async def status(self) -> SystemStatus:
        return await asyncio.to_thread(self.read)

    def read(self) -> SystemStatus:
        battery_pct, charging = self._battery()
        return SystemStatus(
            load_1m=self._first_number("proc/loadavg"),
            mem_available_kb=self._meminfo("MemAvailable"),
            disk_free_kb=self._disk_free(),
            cpu_temp_c=self._temperature(),
            cpu_pct=self._cpu_pct(),
            battery_pct=battery_pct,
            charging=charging,
        )

    def _cpu_pct(self) -> float | None:
        """Busy share since the last call, from the `cpu` line of /proc/stat (None the first time)."""
        first = (self._text("proc/stat") or "").split("\n", 1)[0].split()
        if len(first) < 5 or first[0] != "cpu":
            return None
        try:
            ticks = [int(x) for x in first[1:]]
        except ValueError:
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        total = sum(ticks[:8])  # guest time is already counted in user
        last, self._cpu_last = self._cpu_last, (total, idle)
        if last is None or total <= last[0]:
            return None
        return round(100.0 * (1 - (idle - last[1]) / (total - last[0])), 1)

    def _battery(self) -> tuple[int | None, bool | None]:
        """Charge and whether it is charging, of the first battery; (None, None) without one."""
        supplies = self.root / "sys/class/power_supply"
        try:
            names = sorted(p.name for p in supplies.iterdir())
        except OSError:
            return None, None
        for name in names:
            if (self._text(f"sys/class/power_supply/{name}/type") or "").strip() != "Battery":
                continue
            capacity = (self._text(f"sys/class/power_supply/{name}/capacity") or "").strip()
            status = (self._text(f"sys/class/power_supply/{name}/status") or "").strip()
            return (
                max(0, min(100, int(capacity))) if capacity.isdigit() else None,
                status in {"Charging", "Full"} if status else None,
            )
        return None, None

    def _text(self, relative: str) -> str | None:
        try:
            return (self.root / relative).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return None

    def _first_number(self, relative: str) -> float | None:
        """The first number in a /proc file."""
        try:
            return float((self._text(relative) or "").split()[0])
        except (ValueError, IndexError):
            return None

    def _meminfo(self, key: str) -> int | None:
        text = self._text("proc/meminfo") or ""
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name == key:
                parts = value.split()
                return int(parts[0]) if parts and parts[0].isdigit() else None
        return None

    def _disk_free(self) -> int | None:
        try:
            stat = os.statvfs(self.disk)
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize // 1024

    def _temperature(self) -> float | None:
        text = self._text("sys/class/thermal/thermal_zone0/temp")
        try:
            return round(int(text or "") / 1000, 1)
        except ValueError:
            return None


class FakeSystemInfo:
    def __init__(self, status: SystemStatus | None = None) -> None:
        self.current = status or SystemStatus(load_1m=0.1, mem_available_kb=200_000)

    async def status(self) -> SystemStatus:
        return self.current
