"""`haodian sim` (a fleet of simulated devices, or a whole OTA campaign with faults) and
`haodian peers` (virtual serial hardware on pseudo-terminals)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from haodian.cli.kit import fraction, positive_float, positive_int, server_key


def add_parser(sub: Any) -> None:
    peers = sub.add_parser(
        "peers",
        help="run virtual serial hardware (TTS chip, modem, printer) on pseudo-terminals",
        description="Start a virtual TTS chip, 4G modem and receipt printer, each on a pseudo-terminal "
        "linked as <dir>/tts, <dir>/modem and <dir>/printer, for `haodian agent run --tts-port <dir>/tts "
        "--modem-port <dir>/modem --printer-port <dir>/printer`. 虚拟串口外设。",
    )
    peers.add_argument("--dir", type=Path, default=Path(".haodian/peers"), help="where the links go")
    peers.add_argument("--dialect", choices=["syn6288", "xfs5152"], default="syn6288", help="TTS chip family")
    peers.set_defaults(run=run_peers)

    sim = sub.add_parser(
        "sim",
        help="run a fleet of simulated devices against a broker",
        description="Run N edge agents over simulated hardware against a broker.",
    )
    sim.add_argument("--devices", type=positive_int, default=10, help="devices (default 10)")
    sim.add_argument("--prefix", default="SIM", help="device id prefix (default SIM)")
    sim.add_argument("--broker-url", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    sim.add_argument(
        "--server-key",
        type=server_key,
        action="append",
        help="trusted server Ed25519 public key, base64 or @FILE (required without a scenario)",
    )
    sim.add_argument("--base-dir", type=Path, default=Path(".haodian/sim"), help="state and audio folder")
    sim.add_argument("--health-interval", type=positive_float, default=60.0, help="seconds (default 60)")
    sim.set_defaults(run=run_sim)
    _add_sim_ota_parser(sim)


def _add_sim_ota_parser(sim: argparse.ArgumentParser) -> None:
    scenario = sim.add_subparsers(dest="scenario", metavar="SCENARIO")
    ota = scenario.add_parser(
        "ota",
        help="a whole OTA campaign with injected faults, checked device by device / 模拟 OTA 升级",
        description="Start a fleet server (its own broker and embedded database unless given), N simulated devices "
        "on an old version, of three models, and roll a new one out in waves while downloads are cut, power "
        "fails during installs and one model's new version fails its health check. Prints the final "
        "table; exit status 1 if any device ends without a working slot or off both versions.",
    )
    ota.add_argument("--devices", type=positive_int, default=1000, help="devices (default 1000)")
    ota.add_argument("--flaky", type=fraction, default=0.10, help="share of downloads cut mid-way (default 0.10)")
    ota.add_argument("--power-cuts", type=fraction, default=0.02, help="share of installs cut by power (0.02)")
    ota.add_argument("--bad-health", type=fraction, default=0.01, help="share of the fleet failing health (0.01)")
    ota.add_argument("--bad-model", default="HD-S2", help="the model whose new version fails (default HD-S2)")
    ota.add_argument("--artifact-kib", type=positive_int, default=256, help="artifact size (default 256 KiB)")
    ota.add_argument("--seed", type=int, default=7, help="fault draw seed (default 7)")
    ota.add_argument("--timeout", type=positive_float, default=1200.0, help="seconds to wait (default 1200)")
    ota.add_argument("--data-dir", type=Path, default=Path(".haodian"), help="data folder (default .haodian)")
    ota.add_argument(
        "--broker",
        default="auto",
        help="auto (a private Mosquitto if installed, else the embedded amqtt), embedded, or mqtt://host:port",
    )
    ota.add_argument("--database-url", default=None, help="an empty PostgreSQL database (default: embedded, fresh)")


async def run_peers(args: argparse.Namespace) -> int:
    from simulators.serial_peers import VirtualModem, VirtualPrinter, VirtualTtsChip  # noqa: PLC0415

    args.dir.mkdir(parents=True, exist_ok=True)
    async with (
        VirtualTtsChip(args.dir / "tts", dialect=args.dialect) as chip,
        VirtualModem(args.dir / "modem") as modem,
        VirtualPrinter(args.dir / "printer") as printer,
    ):
        for peer in (chip, modem, printer):
            print(f"{peer.kind:8} {peer.link} -> {peer.pty_name}", flush=True)
        await asyncio.Event().wait()
    return 0


async def run_sim(args: argparse.Namespace) -> int:
    if args.scenario == "ota":
        return await _run_sim_ota(args)
    if not args.server_key:
        raise SystemExit("haodian sim: --server-key is required (the server's public key; see `haodian keys`)")
    from simulators.fleet import SimulatedFleet  # noqa: PLC0415

    async with SimulatedFleet(
        args.devices,
        broker_url=args.broker_url,
        server_keys=args.server_key,
        base_dir=args.base_dir,
        prefix=args.prefix,
        health_interval_s=args.health_interval,
    ) as fleet:
        print(f"{args.devices} simulated devices ({fleet.device_ids[0]}…) on {args.broker_url}", flush=True)
        await asyncio.Event().wait()
    return 0


async def _run_sim_ota(args: argparse.Namespace) -> int:
    from haodian.scenarios.ota_campaign import (  # noqa: PLC0415
        FOLLOW_UP_VERSION,
        FROM_VERSION,
        TO_VERSION,
        OtaSimOptions,
        run_ota_simulation,
    )
    from haodian.settings import Settings  # noqa: PLC0415

    options = OtaSimOptions(
        data_dir=args.data_dir,
        devices=args.devices,
        flaky=args.flaky,
        power_cuts=args.power_cuts,
        bad_health=args.bad_health,
        bad_model=args.bad_model,
        artifact_kib=args.artifact_kib,
        seed=args.seed,
        timeout_s=args.timeout,
        broker=args.broker,
        database_url=args.database_url,
        progress=lambda line: print(line, flush=True),
    )
    print(
        f"好店 OTA 模拟 simulation: {args.devices} devices, {FROM_VERSION} → {TO_VERSION} → {FOLLOW_UP_VERSION}",
        flush=True,
    )
    report = await run_ota_simulation(options, Settings())
    campaign = report.campaign
    print()
    print(report.table())
    print()
    print(
        f"活动 campaign {campaign['campaign_id']}: {campaign['status']}"
        + (f" — {campaign['status_reason']}" if campaign["status_reason"] else "")
    )
    print(f"失败原因 failures by reason: {campaign['failures'] or '-'}")
    print(
        f"设备核对 device check: {report.on_new} on {TO_VERSION}, "
        f"{report.on_old_working} on {FROM_VERSION} (working slot), "
        f"{report.without_working_slot} without a working slot, {len(report.mismatched)} on neither"
    )
    print(
        f"注入故障 faults: {report.faults['download_cuts']} download cuts on {report.faults['flaky_devices']} devices, "
        f"{report.faults['power_cuts']} power cuts during install, {report.faults['bad_health_devices']} devices "
        f"failing health on {TO_VERSION}; paused lanes: {', '.join(report.paused_models) or 'none'}"
    )
    ok = report.without_working_slot == 0 and not report.mismatched
    follow = report.follow_up
    if follow is not None:
        c = follow.campaign
        print()
        print(follow.table())
        print(
            f"后续活动 follow-up {c['campaign_id']} ({FOLLOW_UP_VERSION}, no restarts before it): {c['status']}; "
            f"{follow.on_new}/{follow.devices} devices on {FOLLOW_UP_VERSION}; failures {c['failures'] or '-'}; "
            f"{follow.faults['trial_cuts']} power cuts in trial boots, {c['interrupted']} booted again "
            f"(interrupted, not the release's fault); paused lanes: {', '.join(follow.paused_models) or 'none'}"
        )
        ok = ok and follow.without_working_slot == 0 and not follow.mismatched and not follow.paused_models
    print(f"用时 elapsed {report.elapsed_s:.0f} s")
    return 0 if ok else 1
