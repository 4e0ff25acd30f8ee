"""Draining a serial decoder in tests: every item it yields, errors noted by their offset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from firmware_protocols.errors import CodecError


def drain(next_item: Callable[[], Any], limit: int = 100_000) -> list[Any]:
    """Call `next_item` until it wants more bytes; errors become ("error", offset).

    Fails if the decoder neither finishes nor makes progress within `limit` calls.
    """
    out: list[Any] = []
    for _ in range(limit):
        try:
            item = next_item()
        except CodecError as exc:
            out.append(("error", exc.offset))
            continue
        if item is None:
            assert all(error[1] >= 0 for error in out if isinstance(error, tuple))
            return out
        out.append(item)
    raise AssertionError("decoder did not make progress")
