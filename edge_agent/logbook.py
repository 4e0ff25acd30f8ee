"""The recent log of each agent, kept in memory for the `fetch_log` command.

A field agent's first question about a misbehaving speaker is "what did it say lately?". The
board's flash is too small and too slow to keep a log file worth fetching, so the last lines
are kept in a ring per device id, filled by a structlog processor that the entry point adds to
its chain (`configure` does). Lines are short, one per event, without secrets: the agent
never logs keys or passwords.

`configure` is the logging set-up of every program here: structlog everywhere, JSON lines for
services, readable lines for people. Library code logs with `structlog.get_logger(__name__)` and
binds context (device_id, payment_id, topic); this decides where it goes. Standard-library
loggers (uvicorn, amqtt, psycopg) are routed through the same renderer. It lives with the agent
because the agent, run from an update's slot, has only its own packages (`edge_agent.program`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

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


# Third-party loggers that are chatty at INFO and say nothing an operator needs there.
_QUIET = {
    "amqtt": logging.WARNING,
    "transitions": logging.WARNING,
    "uvicorn.access": logging.WARNING,
    "pgserver": logging.WARNING,
    "httpx": logging.WARNING,  # a line per request; errors are logged by the callers
}


def configure(
    *, json: bool, level: str = "INFO", file: Path | None = None, stream: TextIO | None = None, truncate: bool = False
) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        # Keeps each device's recent lines for the agent's fetch_log command.
        capture,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False) if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json else structlog.processors.ExceptionPrettyPrinter(),
            renderer,
        ],
    )
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, mode="w" if truncate else "a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, quiet_level in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet_level, root.level))
