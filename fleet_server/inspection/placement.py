"""Where a device is against its fingerprint of serving cells: away from it (with a confidence)
or back in place, for the relocation detector (`detectors.detect_relocated`) and the inspector's
back-in-place signal. Pure, over `DeviceFacts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet_server.inspection.detectors import CellSeen, DeviceFacts, InspectionThresholds


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the device is against its fingerprint: away (with a confidence) or back in place."""

    away: bool
    confidence: float
    evidence: dict[str, Any]


def home_cells(f: DeviceFacts, t: InspectionThresholds) -> list[CellSeen]:
    """The device's fingerprint: the learned cells of its first `relocation_anchor_h` hours, and
    each learned cell it reached while it still came back to those (a neighbour it hands over
    to). A cell first seen after the device left them for good is not home, learned or not: the
    device was moved during its learning days. Cells seen only before learning began (a test
    switch-on in the warehouse) do not count."""
    since = f.learning_from
    learned = [c for c in f.cells if c.learned and (since is None or c.last_seen >= since)]
    if not learned:
        return []

    def began(c: CellSeen) -> datetime:
        return c.first_seen if since is None else max(c.first_seen, since)

    anchor_end = min(began(c) for c in learned) + timedelta(hours=t.relocation_anchor_h)
    home = [c for c in learned if began(c) < anchor_end]
    rest = [c for c in learned if began(c) >= anchor_end]
    while rest:
        last_home = max(c.last_seen for c in home)
        joined = [c for c in rest if c.first_seen <= last_home]
        if not joined:
            break
        home += joined
        rest = [c for c in rest if c.first_seen > last_home]
    return home


def placement(f: DeviceFacts, t: InspectionThresholds) -> Placement | None:
    """None when there is nothing to judge by (no fingerprint learned and no position fix, or
    no cell since). While the cells are still being learned (the first days after install), the
    device's GPS fix against the position registered at install is what tells a move (the
    fingerprint of those hours may be of where it was carried)."""
    learned = home_cells(f, t)
    home = {c.cell for c in learned}
    foreign = [c for c in f.cells if c.cell not in home]
    if not learned or _learning(f, t):
        by_position = _by_position(f, t)
        if not learned or (by_position is not None and by_position.away):
            return by_position
    last_home = max(c.last_seen for c in learned)
    # Foreign cells seen since the device was last in a learned one: where it is now.
    since_move = [c for c in foreign if c.last_seen > last_home]
    evidence: dict[str, Any] = {
        "learned_cells": sorted(c.cell for c in learned),
        "current_cells": sorted(c.cell for c in since_move),
        "last_in_learned_cell": last_home.isoformat(),
    }
    if not since_move or min(c.first_seen for c in since_move) <= last_home:
        back = not since_move
        return Placement(away=not back, confidence=0.0, evidence=evidence) if back else None
    reports = sum(c.reports for c in since_move)
    if reports < t.relocation_min_reports:
        return None
    new_area = not {c.area for c in since_move} & {c.area for c in learned}
    confidence = 0.9 if new_area else 0.6
    evidence.update(reports_away=reports, new_tracking_area=new_area)
    if f.gps is not None and f.install_position is not None:
        metres = distance_m(f.gps, f.install_position)
        evidence["gps_distance_m"] = round(metres)
        if metres >= t.relocation_gps_m:
            confidence = max(confidence, 0.98)
        elif metres < t.relocation_gps_m / 2:
            confidence *= 0.3  # the fix says it is where it was installed: a network change
    return Placement(away=True, confidence=round(confidence, 2), evidence=evidence)


def _learning(f: DeviceFacts, t: InspectionThresholds) -> bool:
    """Whether the device is still in its first hours, whose cells make its fingerprint: cells
    learned then may be of a place it was carried to right after install."""
    if f.learning_from is None or not f.cells:
        return False
    return max(c.last_seen for c in f.cells) - f.learning_from < timedelta(hours=t.relocation_anchor_h)


def _by_position(f: DeviceFacts, t: InspectionThresholds) -> Placement | None:
    """Away by its own fix from where the phone stood at install (no cells learned yet, or
    still learning them)."""
    if f.gps is None or f.install_position is None:
        return None
    metres = distance_m(f.gps, f.install_position)
    evidence = {"gps_distance_m": round(metres), "learned_cells": [], "judged_by": "install_position"}
    if metres < t.relocation_gps_m / 2:
        return Placement(away=False, confidence=0.0, evidence=evidence)  # where it was installed
    if metres < t.relocation_gps_m:
        return None  # too near to say
    return Placement(away=True, confidence=0.9, evidence=evidence)
