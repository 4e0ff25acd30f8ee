"""Run a benchmark scenario and print its figures with the machine they ran on.

    python -m bench announce [--devices 20] [--tps 5] [--duration 20] [--json]
    python -m bench codecs [--frames 20000] [--repeats 5] [--json]
    python -m bench footprint [--warmup 15] [--window 60] [--json]
    python -m bench bridge [--rate 1000] [--duration 60] [--devices 1000] [--bridges 1] [--json]
    python -m bench ingest [--devices 10000] [--reports 10] [--json]
    python -m bench query [--devices 100000] [--days 30] [--repeats 3] [--json]

`announce`: payment notification received at the bridge → speaker starts playing, through the
whole embedded stack (amqtt broker, PostgreSQL, fleet server, bridge, N real edge agents with
WAV speakers), at a steady rate. It is the demo's measurement, run for its figures.

`bridge`: the payment bridge alone under a steady notification rate, with a device farm that
acks every announce (bench/bridge.py says exactly what is measured).

`footprint`: one agent process at rest: resident memory (RSS, PSS, peak) and CPU share over a
window, connected to a broker.

`ingest` and `query`: the fleet server on the machine's PostgreSQL (and, for ingest, a private
Mosquitto with the production queue limits); see bench/fleet.py for exactly what each measures.

`codecs`: decode throughput (frames/s) of each serial codec on a realistic stream read in
64-byte chunks: TTS chip frames and replies, modem AT responses with URCs, ESC/POS receipts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench import bridge, codecs, fleet, footprint
from haodian import logs
from haodian.demo import DemoOptions, machine, run_demo
from haodian.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=["announce", "bridge", "codecs", "footprint", "ingest", "query"])
    parser.add_argument("--rate", type=float, default=1000.0, help="bridge: notifications per second")
    parser.add_argument("--bridges", type=int, default=1, help="bridge: bridge processes")
    parser.add_argument("--devices", type=int, help="announce: 20; bridge: 1,000; ingest: 10,000; query: 100,000")
    parser.add_argument("--reports", type=int, default=10, help="ingest: health reports per device")
    parser.add_argument("--days", type=int, default=30, help="query: days of history")
    parser.add_argument("--tps", type=float, default=5.0)
    parser.add_argument("--duration", type=float, help="seconds; announce: 20, bridge: 60")
    parser.add_argument("--frames", type=int, default=20_000, help="codecs: frames per stream")
    parser.add_argument("--repeats", type=int, default=5, help="codecs: runs per codec (best and median shown)")
    parser.add_argument("--warmup", type=float, default=15.0, help="footprint: seconds before measuring")
    parser.add_argument("--window", type=float, default=60.0, help="footprint: seconds of CPU measured")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = parser.parse_args()
    if args.scenario in ("ingest", "query"):
        _fleet(args)
        return
    if args.scenario == "bridge":
        _bridge(args)
        return
    args.duration = args.duration or 20.0
    args.devices = args.devices or 20
    if args.scenario == "codecs":
        _codecs(args)
        return
    if args.scenario == "footprint":
        print(f"measuring one idle agent: {args.warmup:.0f} s warm-up, {args.window:.0f} s window", flush=True)
        result = footprint.measure(warmup_s=args.warmup, window_s=args.window)
        if args.json:
            print(json.dumps({"machine": machine(), "footprint": asdict(result)}, indent=2))
            return
        print(f"machine: {machine()}")
        print(f"broker: {result.broker}; Python {result.python}")
        print(
            f"agent idle: RSS {result.rss_kb / 1024:.1f} MB, PSS {(result.pss_kb or 0) / 1024:.1f} MB, "
            f"peak RSS {result.peak_rss_kb / 1024:.1f} MB, "
            f"CPU {result.cpu_pct:.2f} % of one core over {result.window_s} s"
        )
        return
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


def _fleet(args: argparse.Namespace) -> None:
    logs.configure(json=True, level="WARNING", file=Path(tempfile.gettempdir()) / "haodian-bench-fleet.log")
    result: fleet.IngestFigures | fleet.QueryFigures
    if args.scenario == "ingest":
        devices = args.devices or 10_000
        print(f"ingest: {devices} devices x {args.reports} health reports, flat out", flush=True)
        try:
            result = asyncio.run(fleet.measure_ingest(devices=devices, reports_per_device=args.reports))
        except fleet.BenchError as exc:
            raise SystemExit(f"bench ingest: {exc}") from exc
    else:
        devices = args.devices or 100_000
        print(f"query: {devices} devices x {args.days} days of history (generating and loading)", flush=True)
        result = asyncio.run(fleet.measure_query(devices=devices, days=args.days, repeats=args.repeats))
    if args.json:
        print(json.dumps({"machine": machine(), args.scenario: asdict(result)}, indent=2))
        return
    print(f"machine: {machine()}")
    print("database: the machine's PostgreSQL 127.0.0.1:5432 (native partitions, no TimescaleDB)")
    for line in result.lines():
        print(line)


def _bridge(args: argparse.Namespace) -> None:
    logs.configure(json=True, level="WARNING", file=Path(tempfile.gettempdir()) / "haodian-bench-bridge.log")
    try:
        result = asyncio.run(
            bridge.measure_bridge(
                rate=args.rate, duration_s=args.duration or 60.0, devices=args.devices or 1000, bridges=args.bridges
            )
        )
    except fleet.BenchError as exc:
        raise SystemExit(f"bench bridge: {exc}") from exc
    if args.json:
        print(json.dumps({"machine": machine(), "bridge": asdict(result)}, indent=2))
        return
    print(f"machine: {machine()}")
    print(
        "database: the machine's PostgreSQL 127.0.0.1:5432; broker: a private Mosquitto (deploy/mosquitto.conf limits)"
    )
    for line in result.lines():
        print(line)


def _codecs(args: argparse.Namespace) -> None:
    figures = codecs.measure(frames=args.frames, repeats=args.repeats)
    if args.json:
        print(json.dumps({"machine": machine(), "figures": [asdict(f) for f in figures]}, indent=2))
        return
    print(f"machine: {machine()}")
    print(f"parameters: frames per stream {args.frames}, best of {args.repeats}, reads of {codecs.READ_SIZE} bytes")
    for figure in figures:
        print(figure.line())


if __name__ == "__main__":
    main()
