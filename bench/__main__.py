"""Measure one scenario and print its figures with the machine, broker and database it ran on.

    haodian bench SCENARIO [options]        (the same as: python -m bench SCENARIO [options])

Scenarios (each also measures the ceiling it runs against, on the same run):
  announce     payment notification -> playback start on the device at a steady rate, through
               1 or more bridge processes (--bridges); ceilings: raw broker hop, raw commit
  ingest       device health reports into PostgreSQL: at the devices' real report interval
               (--interval 60) or flat out (--interval 0), through 1 or more ingest processes
               (--ingesters); ceiling: raw COPY of the same rows
  query        the dashboard's figures over --devices x --days of history with payments (--per-day)
  api          device lookups and fleet summaries over HTTP at a steady rate (--rate);
               ceiling: /healthz at the same rate
  connections  concurrent device MQTT connections held (--devices), and memory per connection
  agent        one agent's idle RSS and CPU (as on a device), and its announce path cost
  codecs       decode throughput of the serial codecs (TTS chips, modem AT, ESC/POS)
  rollups      what keeping the delivery rollups costs PostgreSQL per notification (the bridge's
               recording and ack statements); floor: the same with the rollups not built
  record       the cost of recording one payment (the bridge's one statement, committed): our
               backend's and a platform's routed one; ceiling: the commit of one plain row
  reports      the per-message cost of signing a device's ack and of verifying it; ceiling: the
               raw HMAC-SHA256
  demo         the demo's end-to-end run (embedded broker and database, real agents)

--broker private|machine|embedded and --database machine|embedded choose where it runs (see
bench/env.py); the defaults are a private Mosquitto with deploy/mosquitto.conf and the
machine's PostgreSQL. --json prints the whole report as JSON. Record results in BENCHMARKS.md
by hand, with the date and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import uvloop

from bench import agent, announce, api, codecs, connections, fleet, record, reports, rollups
from bench.env import BROKERS, DATABASES, BenchError, machine
from haodian import logs


class Figures(Protocol):
    def lines(self) -> list[str]: ...


SCENARIOS = (
    "announce",
    "ingest",
    "query",
    "api",
    "connections",
    "agent",
    "codecs",
    "record",
    "rollups",
    "reports",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haodian bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--broker", choices=BROKERS, default="private", help="MQTT broker (default private)")
    parser.add_argument("--database", choices=DATABASES, default="machine", help="PostgreSQL (default machine)")
    parser.add_argument("--rate", type=float, help="announce: notifications/s (1,000); api: requests/s (1,000)")
    parser.add_argument("--duration", type=float, help="seconds at the rate: announce 60, api 20, demo 20")
    parser.add_argument(
        "--devices",
        type=int,
        help="announce 1,000; ingest 10,000; query 100,000; api 10,000; connections 10,000; rollups 1,000; demo 20",
    )
    parser.add_argument("--bridges", type=int, default=1, help="announce: bridge processes (default 1)")
    parser.add_argument("--ingesters", type=int, default=1, help="ingest: ingest processes (default 1)")
    parser.add_argument(
        "--interval", type=float, default=60.0, help="ingest: seconds between a device's reports; 0 = flat out"
    )
    parser.add_argument("--reports", type=int, default=3, help="ingest: health reports per device (default 3)")
    parser.add_argument("--days", type=int, default=30, help="query: days of history (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="query, codecs, reports, rollups: runs of each")
    parser.add_argument(
        "--per-day", type=float, default=40.0, help="query: payments a day per merchant on average (default 40, v2)"
    )
    parser.add_argument(
        "--raw-days", type=int, default=2, help="query: local days of raw payments and deliveries (default 2)"
    )
    parser.add_argument("--processes", type=int, default=2, help="connections: simulator processes (default 2)")
    parser.add_argument("--tps", type=float, default=5.0, help="demo: payments per second (default 5)")
    parser.add_argument("--frames", type=int, default=20_000, help="codecs: frames per stream")
    parser.add_argument("--messages", type=int, default=20_000, help="reports: messages per run")
    parser.add_argument("--warmup", type=float, default=15.0, help="agent: seconds before measuring idle")
    parser.add_argument("--window", type=float, default=60.0, help="agent: seconds of idle CPU measured")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in (
        "rate",
        "duration",
        "devices",
        "bridges",
        "ingesters",
        "reports",
        "days",
        "repeats",
        "per_day",
        "raw_days",
        "processes",
        "messages",
    ):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SystemExit(f"haodian bench: --{name} must be positive, not {value}")
    logs.configure(json=True, level="WARNING", file=Path(tempfile.gettempdir()) / f"haodian-bench-{args.scenario}.log")
    run: Callable[[argparse.Namespace], tuple[dict[str, Any], Figures]] = RUNNERS[args.scenario]
    try:
        parameters, figures = run(args)
    except BenchError as exc:
        print(f"haodian bench {args.scenario}: {exc}", file=sys.stderr)
        return 2
    report = {"scenario": args.scenario, "machine": machine(), "parameters": parameters}
    if args.json:
        report["figures"] = asdict(figures) if is_dataclass(figures) and not isinstance(figures, type) else figures
        print(json.dumps(report, ensure_ascii=False, indent=2, default=str))
        return 0
    print(f"\nmachine: {report['machine']}")
    print(f"parameters: {parameters}")
    for line in figures.lines():
        print(line)
    return 0


def _where(args: argparse.Namespace) -> dict[str, Any]:
    return {"broker": args.broker, "database": args.database}


def _announce(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {
        "rate": args.rate or 1000.0,
        "duration_s": args.duration or 60.0,
        "devices": args.devices or 1000,
        "bridges": args.bridges,
    }
    figures = uvloop.run(
        announce.measure_announce(
            rate=parameters["rate"],
            duration_s=parameters["duration_s"],
            devices=parameters["devices"],
            bridges=args.bridges,
            broker_kind=args.broker,
            database_kind=args.database,
        )
    )
    return parameters | _where(args), figures


def _ingest(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {
        "devices": args.devices or 10_000,
        "reports_per_device": args.reports,
        "interval_s": args.interval,
        "ingesters": args.ingesters,
    }
    figures = uvloop.run(
        fleet.measure_ingest(
            devices=parameters["devices"],
            reports_per_device=args.reports,
            interval_s=args.interval,
            ingesters=args.ingesters,
            broker_kind=args.broker,
            database_kind=args.database,
        )
    )
    return parameters | _where(args), figures


def _query(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {
        "devices": args.devices or 100_000,
        "days": args.days,
        "repeats": args.repeats,
        "per_day": args.per_day,
        "raw_days": args.raw_days,
    }
    figures = asyncio.run(
        fleet.measure_query(
            devices=parameters["devices"],
            days=args.days,
            repeats=args.repeats,
            per_day=args.per_day,
            raw_days=args.raw_days,
            database_kind=args.database,
        )
    )
    return parameters | {"database": args.database}, figures


def _api(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    rate, duration_s, devices = args.rate or 1000.0, args.duration or 20.0, args.devices or 10_000
    parameters = {"rate": rate, "duration_s": duration_s, "devices": devices}
    figures = uvloop.run(
        api.measure_api(
            rate=rate,
            duration_s=duration_s,
            devices=devices,
            broker_kind=args.broker,
            database_kind=args.database,
        )
    )
    return parameters | _where(args), figures


def _connections(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {"devices": args.devices or 10_000, "processes": args.processes}
    figures = uvloop.run(
        connections.measure_connections(
            devices=parameters["devices"], processes=args.processes, broker_kind=args.broker
        )
    )
    return parameters | {"broker": args.broker}, figures


def _agent(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {"warmup_s": args.warmup, "window_s": args.window}
    print(f"measuring one idle agent: {args.warmup:.0f} s warm-up, {args.window:.0f} s window", flush=True)
    return parameters, agent.measure(warmup_s=args.warmup, window_s=args.window)


def _codecs(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {"frames": args.frames, "repeats": args.repeats, "read_size": codecs.READ_SIZE}
    return parameters, codecs.CodecFigures(codecs.measure(frames=args.frames, repeats=args.repeats))


def _record(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {"messages": min(args.messages, 2000), "repeats": args.repeats, "database": args.database}
    figures = asyncio.run(
        record.measure(messages=parameters["messages"], repeats=args.repeats, database_kind=args.database)
    )
    return parameters, figures


def _rollups(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {"devices": args.devices or 1000, "repeats": args.repeats, "database": args.database}
    figures = asyncio.run(
        rollups.measure(devices=parameters["devices"], repeats=args.repeats, database_kind=args.database)
    )
    return parameters, figures


def _reports(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    parameters = {"messages": args.messages, "repeats": args.repeats}
    return parameters, reports.measure(messages=args.messages, repeats=args.repeats)


def _demo(args: argparse.Namespace) -> tuple[dict[str, Any], Figures]:
    from haodian.scenarios.demo import DemoOptions, run_demo  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    parameters = {"devices": args.devices or 20, "tps": args.tps, "duration_s": args.duration or 20.0}
    with tempfile.TemporaryDirectory(prefix="haodian-bench-") as tmp:
        data_dir = Path(tmp)
        logs.configure(json=True, level="WARNING", file=data_dir / "bench.log")
        report = asyncio.run(
            run_demo(
                DemoOptions(
                    devices=parameters["devices"],
                    tps=args.tps,
                    duration_s=parameters["duration_s"],
                    report=data_dir / "report.json",
                    data_dir=data_dir,
                    http_port=0,
                ),
                Settings(),
            )
        )
    return parameters, DemoFigures(report["delivery"])


@dataclass(frozen=True, slots=True)
class DemoFigures:
    delivery: dict[str, Any]

    def lines(self) -> list[str]:
        d = self.delivery
        out = [
            "broker: embedded amqtt, in process; database: embedded PostgreSQL (pgserver); real edge agents",
            f"payments {d['payments']}, deliveries {d['deliveries']}, delivered {d['delivered']},"
            f" delivery rate {d['delivery_rate']}",
        ]
        out.extend(
            f"{name}: " + "  ".join(f"{k} {v:.1f}" for k, v in d[name].items() if v is not None)
            for name in ("latency_ms", "ack_round_trip_ms")
        )
        return out


RUNNERS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], Figures]]] = {
    "announce": _announce,
    "record": _record,
    "ingest": _ingest,
    "query": _query,
    "api": _api,
    "connections": _connections,
    "agent": _agent,
    "codecs": _codecs,
    "rollups": _rollups,
    "reports": _reports,
    "demo": _demo,
}


if __name__ == "__main__":
    sys.exit(main())
