"""Capped exponential backoff with jitter, for reconnects and retried writes."""

from __future__ import annotations

import random


class Backoff:
    """Equal-jitter exponential backoff: the n-th delay is drawn uniformly from [c/2, c], where
    c = min(max_s, initial_s·2ⁿ).

    Why not full jitter ([0, c]): a fleet that loses its broker reconnects all at once when it
    comes back. Full jitter spreads that best but lets some devices retry almost at once, again
    and again; with equal jitter every device waits at least half the ceiling, so a broker that
    is still starting is not hammered, and the herd is still spread over the other half.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial = initial_s
        self._max = max_s
        self._attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security.

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._max, self._initial * 2**self._attempt)
        # 32 doublings pass any cap in use; stopping there keeps 2**n a small integer.
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(ceiling / 2, ceiling)
