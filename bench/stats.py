"""Small measuring helpers shared by the scenarios."""

from __future__ import annotations

import os
from pathlib import Path


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max (nearest rank); all None for no values."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def fmt(p: dict[str, float | None]) -> str:
    """Percentiles on one line: "p50 1.2  p95 3.4  p99 5.6  max 7.8" ("-" when there are none)."""
    return "  ".join(f"{k} {v:.1f}" for k, v in p.items() if v is not None) or "-"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants alive now, the process first."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants alive now."""
    return sum(process_cpu_s(current) for current in process_tree(pid))
