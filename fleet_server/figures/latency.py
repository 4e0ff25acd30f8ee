"""The announcement latency histogram: fixed buckets, so percentiles come from sums.

Received → playback start, in milliseconds, counted in the buckets below (migration 0015's
`latency_bucket()`, pinned to `EDGES` by a test), both by the delivery rollups and by the raw
computation: p50 and p95 are read from the counts the same way on both paths (exact to the
bucket, linear within it, as Prometheus's `histogram_quantile`), so the two always agree.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Final

# Upper bounds (ms) of every bucket but the last; bucket 0 is below 5 ms, the last 5 minutes on.
EDGES: Final = (
    *(5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750),
    *(1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000, 300000),
)
BUCKETS: Final = len(EDGES) + 1
# The rollup rows' columns, one per bucket.
COLUMNS: Final = tuple(f"lat_{i:02d}" for i in range(BUCKETS))


def bucket(ms: float) -> int:
    """The bucket of a latency, as `latency_bucket()` places it (`width_bucket`)."""
    return bisect.bisect_right(EDGES, ms)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile of the latencies counted in `counts` (one per bucket); None when empty.
    Within the bucket it falls in, linear between the bucket's bounds (0 below the first; the
    last bucket, which has no upper bound, answers its lower one)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n > 0 and seen + n >= rank:
            if i == BUCKETS - 1:
                return float(EDGES[-1])
            low = 0.0 if i == 0 else float(EDGES[i - 1])
            return low + (EDGES[i] - low) * (rank - seen) / n
        seen += n
    return float(EDGES[-1])


def counted_sql(column: str) -> str:
    """The bucket counts of raw rows whose bucket (`latency_bucket()`) is `column`, as one int[]."""
    return "ARRAY[" + ", ".join(f"count(*) FILTER (WHERE {column} = {i})" for i in range(BUCKETS)) + "]::int[]"


def summed_sql(alias: str) -> str:
    """The bucket counts summed over rollup rows `alias`, as one int[]."""
    return "ARRAY[" + ", ".join(f"COALESCE(sum({alias}.{c}), 0)" for c in COLUMNS) + "]::int[]"
