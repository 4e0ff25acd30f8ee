"""Uplink messages waiting for the broker while the link is down.

Acks are kept (the server needs them to prove delivery); telemetry is bounded and the oldest
goes first when it is full. Flushed in order of production on reconnect.
This in-memory outbox is the skeleton's; the on-disk outbox that survives a power cut replaces it
with the same interface.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, order=True)
class Pending:
    seq: int
    topic: str = field(compare=False)
    payload: bytes = field(compare=False)
    is_ack: bool = field(compare=False)


class Outbox:
    def __init__(self, *, max_acks: int = 10_000, max_telemetry: int = 500) -> None:
        self._seq = itertools.count()
        self._acks: deque[Pending] = deque(maxlen=max_acks)
        self._telemetry: deque[Pending] = deque(maxlen=max_telemetry)

    def put(self, topic: str, payload: bytes, *, is_ack: bool) -> None:
        self._keep(Pending(next(self._seq), topic, payload, is_ack))

    def requeue(self, items: list[Pending]) -> None:
        """Put back what a flush could not send; it keeps its place in the order."""
        for item in items:
            self._keep(item)

    def _keep(self, item: Pending) -> None:
        (self._acks if item.is_ack else self._telemetry).append(item)

    def __len__(self) -> int:
        return len(self._acks) + len(self._telemetry)

    def drain(self) -> list[Pending]:
        """Everything waiting, oldest first; the outbox is empty afterwards."""
        items = sorted([*self._acks, *self._telemetry])
        self._acks.clear()
        self._telemetry.clear()
        return items
