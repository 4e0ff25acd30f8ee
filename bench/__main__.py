"""Run a benchmark scenario and print its figures with the machine they ran on.

    python -m bench announce [--devices 20] [--tps 5] [--duration 20] [--json]

`announce`: payment notification received at the bridge → speaker starts playing, through the
whole embedded stack (amqtt broker, PostgreSQL, fleet server, bridge, N real edge agents with
WAV speakers), at a steady rate. It is the demo's measurement, run for its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from haodian import logs
from haodian.demo import DemoOptions, run_demo
from haodian.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=["announce"])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--tps", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="haodian-bench-") as tmp:
        data_dir = Path(tmp)
        logs.configure(json=True, level="WARNING", file=data_dir / "bench.log")
        report = asyncio.run(
            run_demo(
                DemoOptions(
                    devices=args.devices,
                    tps=args.tps,
                    duration_s=args.duration,
                    report=data_dir / "report.json",
                    data_dir=data_dir,
                    http_port=0,
                ),
                Settings(),
            )
        )
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return
    delivery = report["delivery"]
    print(f"\nmachine: {report['machine']}")
    print(f"parameters: {report['parameters']}")
    print(
        f"payments {delivery['payments']}, deliveries {delivery['deliveries']}, delivered {delivery['delivered']},"
        f" delivery rate {delivery['delivery_rate']}"
    )
    for name in ("latency_ms", "ack_round_trip_ms"):
        figures = delivery[name]
        print(f"{name}: " + "  ".join(f"{k} {v:.1f}" for k, v in figures.items() if v is not None))


if __name__ == "__main__":
    main()
