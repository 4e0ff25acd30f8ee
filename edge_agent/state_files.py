"""Small files in the agent's state folder, written so that a power cut never leaves half of one."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Literal


def write_atomically(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace `path` with `data` in one step (write a neighbour, then rename); OSError if it cannot.

    `durable`: the new content is on the flash before this returns (fsync of the file and of the
    folder's entry), for what a power cut must not undo, such as the boot environment."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    tmp.replace(path)
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_json(path: Path, data: dict[str, Any], *, durable: bool = False) -> None:
    write_atomically(path, json.dumps(data, ensure_ascii=False).encode(), durable=durable)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def open_sqlite(path: Path | None, *, synchronous: Literal["NORMAL", "FULL"]) -> sqlite3.Connection:
    """A WAL-mode SQLite database in the state folder (in memory without a path), autocommit.

    `FULL` puts every commit on the flash before it returns; `NORMAL` survives a killed process
    but an OS crash or power cut may lose the last commits (see each caller for its choice)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db
