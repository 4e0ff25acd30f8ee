"""Logging set-up: structlog everywhere, JSON lines for services, readable lines for people.

Library code logs with `structlog.get_logger(__name__)` and binds context (device_id,
payment_id, topic); this module decides where it goes. Standard-library loggers (uvicorn,
amqtt, psycopg) are routed through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import structlog

from edge_agent import logbook

# Third-party loggers that are chatty at INFO and say nothing an operator needs there.
_QUIET = {
    "amqtt": logging.WARNING,
    "transitions": logging.WARNING,
    "uvicorn.access": logging.WARNING,
    "pgserver": logging.WARNING,
}


def configure(
    *, json: bool, level: str = "INFO", file: Path | None = None, stream: TextIO | None = None, truncate: bool = False
) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        # Keeps each device's recent lines for the agent's fetch_log command.
        logbook.capture,
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
