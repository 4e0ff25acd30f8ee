"""Per-client rate limits: a token bucket per key (client address, login), kept in memory.

    limiter = RateLimiter(per_s=10 / 60, burst=10)       # ten sign-in attempts a minute
    if (wait := limiter.take(client_ip)) is not None:
        ... answer 429 with Retry-After: ceil(wait) ...

Each process keeps its own buckets: with N workers the fleet-wide limit is N times as high,
which still stops guessing and floods; a shared limit belongs in the load balancer in front.
The table is bounded: past `max_keys` the keys idle longest are forgotten (a full bucket is
the state they would be in anyway).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog
from fastapi.responses import JSONResponse

from fleet_server.http.errors import error_response

log = structlog.get_logger(__name__)


class RateLimiter:
    def __init__(
        self, *, per_s: float, burst: int, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs per_s > 0 and burst >= 1")
        self.per_s = per_s
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """Keys being tracked (at most `max_keys`: the idlest is forgotten past it)."""
        return len(self._buckets)

    def take(self, key: str) -> float | None:
        """Spend one token of `key`: None if allowed, else the seconds until one is back."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.per_s


def too_many(limiter: RateLimiter | None, key: str, what: str, what_zh: str) -> JSONResponse | None:
    """A 429 answer (with Retry-After) if `key` is over `limiter`'s rate, else None."""
    if limiter is None or (wait_s := limiter.take(key)) is None:
        return None
    retry = max(1, math.ceil(wait_s))
    log.warning("rate limited", what=what, key=key, retry_after_s=retry)
    answer = error_response(
        429, "RATE_LIMITED", f"too many {what}; retry in {retry} s", f"{what_zh}过于频繁，请 {retry} 秒后重试"
    )
    answer.headers["Retry-After"] = str(retry)
    return answer
