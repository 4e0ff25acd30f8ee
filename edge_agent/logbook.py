"""The recent log of each agent, kept in memory for the `fetch_log` command.

A field agent's first question about a misbehaving speaker is "what did it say lately?". The
board's flash is too small and too slow to keep a log file worth fetching, so the last lines
are kept in a ring per device id, filled by a structlog processor that the entry point adds to
its chain (`haodian.logs` does). Lines are short, one per event, without secrets: the agent
never logs keys or passwords.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import MutableMapping
from typing import Any

# About 80 bytes a line: 500 lines are 40 KB per device, and cover hours of a healthy device.
LINES_PER_DEVICE = 500

_rings: dict[str, deque[str]] = {}


def _line(event_dict: MutableMapping[str, Any], level: str) -> str:
    fields = {k: v for k, v in event_dict.items() if k not in {"event", "device_id", "timestamp", "logger", "level"}}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    extra = " ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in fields.items())
    return f"{stamp}Z {level} {event_dict.get('event', '')} {extra}".rstrip()


def capture(logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:  # noqa: ARG001 - structlog's processor signature
    """A structlog processor: keep a line for every event that names a device."""
    device_id = event_dict.get("device_id")
    if isinstance(device_id, str):
        ring = _rings.get(device_id)
        if ring is None:
            ring = _rings[device_id] = deque(maxlen=LINES_PER_DEVICE)
        ring.append(_line(event_dict, method_name))
    return event_dict


def recent(device_id: str, lines: int) -> list[str]:
    """The last `lines` lines logged for `device_id`, oldest first."""
    ring = _rings.get(device_id)
    if not ring or lines <= 0:
        return []
    return list(ring)[-lines:]


def forget(device_id: str) -> None:
    _rings.pop(device_id, None)
