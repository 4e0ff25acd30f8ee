"""`haodian bench SCENARIO ...`: the benchmarks (`python -m bench`), every argument theirs.

`main` hands the arguments after `bench` to the benchmarks before parsing anything; the parser
here only names the command in `haodian -h`."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure a scenario: announce, ingest, query, api, connections, agent, codecs, demo",
        description="Run a benchmark scenario (the same as python -m bench); haodian bench -h lists them.",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
