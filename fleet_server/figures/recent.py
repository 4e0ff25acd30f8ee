"""The last answer of an expensive read, reused for a few seconds.

    summary = Recent[FleetSummary](ttl_s=10)
    answer = await summary.get(compute)   # computes at most once per 10 s; callers meanwhile share it

A dashboard refreshes every 10 s; a thousand of them asking for the fleet's default 24-hour
summary need one computation per interval, not a thousand. Concurrent callers while it is being
computed wait for that one computation (single flight); a failure is not kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    def __init__(self, ttl_s: float, *, reuse_after_s: float = 0.0) -> None:
        self._ttl = ttl_s
        self._reuse_after = reuse_after_s
        self._value: T | None = None
        self._at = float("-inf")
        self._lock = asyncio.Lock()
        self.computed = 0

    async def get(self, compute: Callable[[], Awaitable[T]]) -> T:
        if self._value is not None and time.monotonic() - self._at < self._ttl:
            return self._value
        async with self._lock:
            # Another caller may have computed it while this one waited for the lock.
            if self._value is not None and time.monotonic() - self._at < self._ttl:
                return self._value
            began = time.monotonic()
            value = await compute()
            done = time.monotonic()
            self.computed += 1
            if done - began >= self._reuse_after:
                self._value, self._at = value, done
            return value
