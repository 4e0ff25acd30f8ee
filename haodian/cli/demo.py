"""`haodian demo`: everything on this machine, with simulated devices and payments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from haodian.cli.kit import positive_float, positive_int, tcp_port


def add_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run everything on this machine with simulated devices and payments",
        description="Start an embedded broker and database, the fleet server and bridge, N "
        "simulated devices and a simulated payment backend; print a live summary and write "
        "a JSON report. 本机演示：模拟设备与支付，实时汇总，结束时写出报告。",
    )
    demo.add_argument("--devices", type=positive_int, default=20, help="simulated devices (default 20)")
    demo.add_argument("--tps", type=positive_float, default=5.0, help="payments per second (default 5)")
    demo.add_argument("--duration", type=positive_float, default=20.0, help="seconds of payments (default 20)")
    demo.add_argument(
        "--report", type=Path, default=None, help="JSON report file (default <data-dir>/demo/report.json)"
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".haodian"),
        help="where the embedded database, keys and audio go (default .haodian)",
    )
    demo.add_argument("--http-port", type=tcp_port, default=0, help="API port (default: a free one)")
    demo.add_argument(
        "--serial-devices",
        type=int,
        default=2,
        help="how many devices are POS terminals with a TTS chip, modem and printer on pseudo-terminals (default 2)",
    )
    demo.add_argument(
        "--stay",
        action="store_true",
        help="after the report, keep serving the pages with payments going on until Ctrl-C / 结束后继续运行",
    )
    demo.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    from haodian.scenarios.demo import DemoOptions, run_demo  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    report = await run_demo(
        DemoOptions(
            devices=args.devices,
            tps=args.tps,
            duration_s=args.duration,
            report=args.report or args.data_dir / "demo" / "report.json",
            data_dir=args.data_dir,
            http_port=args.http_port,
            serial_devices=min(max(args.serial_devices, 0), args.devices),
            stay=args.stay,
        ),
        Settings(),
    )
    return 0 if report["delivery"]["delivery_rate"] == 1.0 else 1
