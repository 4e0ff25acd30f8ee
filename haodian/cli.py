"""`haodian`: one command for the demo, the servers, an agent and the simulators.

Server-side imports are made inside the subcommands, so `haodian agent` runs on a device with
only the base (agent) dependencies installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edge_agent.errors import AgentError
from haodian import fleet_cli, ota_cli, trust_cli, users_cli

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

EXAMPLES = """\
examples / 示例:
  haodian demo --devices 20 --tps 5 --duration 20     # everything on this machine / 本机完整演示
  haodian server                                      # fleet server + bridge, embedded broker and database
  HAODIAN_MQTT_URL=mqtt://127.0.0.1:1883 HAODIAN_DATABASE_URL=postgresql://postgres@127.0.0.1/test haodian server
  haodian keys                                        # show the server public key to provision agents with
  haodian agent run --device-id SPK0001 --broker-url mqtt://127.0.0.1:1883 --server-key <base64>
  haodian agent diagnose --device-id SPK0001 --server-key <base64>   # field agent's checklist / 设备自检
  haodian sim ota                                     # a 1,000-device OTA campaign with faults / OTA 升级模拟
  haodian ota campaigns                               # OTA campaigns and their progress / 升级进度
  haodian users add ops --role ops-admin              # the first account / 创建运营管理员账号
  haodian login --login ops                           # sign the CLIs in / 命令行登录
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {value}")
    return value


def _server_key(text: str) -> str:
    """A base64 Ed25519 public key, or @FILE holding one."""
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read server key file {text[1:]}: {exc}") from exc
    return text


def _add_agent_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = sub.add_parser(
        "agent",
        help="the edge agent of one device: run it, or diagnose the device",
        description="The edge agent of one device. `run` runs it; `diagnose` prints the field agent's "
        "checklist. Both read the same configuration: a TOML file (--config) and/or flags. "
        "设备端程序：run 运行，diagnose 自检。",
    )
    agent_sub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--config", type=Path, default=None, help="agent configuration file (TOML)")
    device.add_argument("--device-id", default=None, help="device id, e.g. SPK0001")
    device.add_argument(
        "--broker-url", default=None, help="mqtt[s]://[user[:pass]@]host[:port] (default mqtt://127.0.0.1:1883)"
    )
    device.add_argument(
        "--server-key",
        type=_server_key,
        action="append",
        default=None,
        help="trusted server Ed25519 public key, base64 or @FILE (repeat during rotation)",
    )
    device.add_argument("--state-dir", type=Path, default=None, help="state folder (default .haodian/agent/<id>)")
    device.add_argument(
        "--audio-dir",
        type=Path,
        default=None,
        help="where announcements are written as WAV (default <state-dir>/audio)",
    )
    device.add_argument(
        "--health-interval", type=_positive_float, default=None, help="seconds between health reports (default 60)"
    )
    device.add_argument("--tts-port", default=None, help="TTS chip serial port (default: none, voice clips)")
    device.add_argument(
        "--tts-dialect", choices=["syn6288", "xfs5152"], default=None, help="TTS chip family (default syn6288)"
    )
    device.add_argument("--modem-port", default=None, help="4G modem AT port (default: none, simulated modem)")
    device.add_argument("--printer-port", default=None, help="ESC/POS printer serial port (default: none)")
    device.add_argument("--audio-device", default=None, help="ALSA device for voice clips, e.g. default or hw:0")
    agent_sub.add_parser(
        "run",
        parents=[device],
        help="run the agent on real or simulated hardware",
        description="Run the edge agent of one device. Speech goes to the TTS chip on --tts-port, "
        "else voice clips to ALSA --audio-device, else WAV files in --audio-dir (the simulated "
        "speaker). Serial ports may be devices (/dev/ttyS1) or the links `haodian peers` makes. "
        "A remote reboot restarts the process.",
    )
    diag = agent_sub.add_parser(
        "diagnose",
        parents=[device],
        help="check the device and say what is wrong (for field agents) / 设备自检",
        description="Check power, storage, speaker, TTS chip, modem, SIM, signal, broker, clock and the "
        "last announcement; print pass/warn/fail with a fix hint. Exit status 1 when a check fails. "
        "检查电源、存储、喇叭、TTS 芯片、4G 模块、SIM 卡、信号、服务器、时钟和最近播报。",
    )
    diag.add_argument("--lang", choices=["zh", "en"], default="zh", help="language of the checklist (default zh)")
    diag.add_argument("--json", action="store_true", help="print JSON for machines")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


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
    ota.add_argument("--devices", type=_positive_int, default=1000, help="devices (default 1000)")
    ota.add_argument("--flaky", type=_fraction, default=0.10, help="share of downloads cut mid-way (default 0.10)")
    ota.add_argument("--power-cuts", type=_fraction, default=0.02, help="share of installs cut by power (0.02)")
    ota.add_argument("--bad-health", type=_fraction, default=0.01, help="share of the fleet failing health (0.01)")
    ota.add_argument("--bad-model", default="HD-S2", help="the model whose new version fails (default HD-S2)")
    ota.add_argument("--artifact-kib", type=_positive_int, default=256, help="artifact size (default 256 KiB)")
    ota.add_argument("--seed", type=int, default=7, help="fault draw seed (default 7)")
    ota.add_argument("--timeout", type=_positive_float, default=1200.0, help="seconds to wait (default 1200)")
    ota.add_argument("--data-dir", type=Path, default=Path(".haodian"), help="data folder (default .haodian)")
    ota.add_argument(
        "--broker",
        default="auto",
        help="auto (a private Mosquitto if installed, else the embedded amqtt), embedded, or mqtt://host:port",
    )
    ota.add_argument("--database-url", default=None, help="an empty PostgreSQL database (default: embedded, fresh)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haodian",
        description="好店 Haodian device fleet: payment speakers, fleet server and payment bridge.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run everything on this machine with simulated devices and payments",
        description="Start an embedded broker and database, the fleet server and bridge, N "
        "simulated devices and a simulated payment backend; print a live summary and write "
        "a JSON report. 本机演示：模拟设备与支付，实时汇总，结束时写出报告。",
    )
    demo.add_argument("--devices", type=_positive_int, default=20, help="simulated devices (default 20)")
    demo.add_argument("--tps", type=_positive_float, default=5.0, help="payments per second (default 5)")
    demo.add_argument("--duration", type=_positive_float, default=20.0, help="seconds of payments (default 20)")
    demo.add_argument(
        "--report", type=Path, default=None, help="JSON report file (default <data-dir>/demo/report.json)"
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".haodian"),
        help="where the embedded database, keys and audio go (default .haodian)",
    )
    demo.add_argument("--http-port", type=_port, default=0, help="API port (default: a free one)")
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

    server = sub.add_parser(
        "server",
        help="run the fleet server and/or payment bridge (HTTP API + MQTT)",
        description="Run the fleet server and payment bridge. Configured by HAODIAN_* "
        "environment variables (see README); without HAODIAN_MQTT_URL / "
        "HAODIAN_DATABASE_URL it starts the embedded broker / database.",
    )
    server.add_argument(
        "--parts",
        default="fleet,bridge",
        help="comma-separated: fleet (API, pages, inspector, OTA, ingest), bridge, ingest (an extra ingest);"
        " default fleet,bridge in one process",
    )
    server.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes of the given stateless parts (bridge, ingest) sharing the port and the device"
        " streams; needs HAODIAN_MQTT_URL and HAODIAN_DATABASE_URL (default 1)",
    )
    server.add_argument("--host", default=None, help="HTTP bind address (default HAODIAN_HTTP_HOST or 127.0.0.1)")
    server.add_argument("--port", type=_port, default=None, help="HTTP port (default HAODIAN_HTTP_PORT or 8000)")

    bench = sub.add_parser(
        "bench",
        help="measure a scenario: announce, ingest, query, api, connections, agent, codecs, demo",
        description="Run a benchmark scenario (the same as python -m bench); haodian bench -h lists them.",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)

    broker = sub.add_parser(
        "broker",
        help="run the embedded MQTT broker (amqtt) on its own",
        description="Run the embedded amqtt broker, MQTT 3.1.1, until interrupted.",
    )
    broker.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    broker.add_argument("--port", type=_port, default=1883, help="port (default 1883)")

    _add_agent_parser(sub)

    peers = sub.add_parser(
        "peers",
        help="run virtual serial hardware (TTS chip, modem, printer) on pseudo-terminals",
        description="Start a virtual TTS chip, 4G modem and receipt printer, each on a pseudo-terminal "
        "linked as <dir>/tts, <dir>/modem and <dir>/printer, for `haodian agent run --tts-port <dir>/tts "
        "--modem-port <dir>/modem --printer-port <dir>/printer`. 虚拟串口外设。",
    )
    peers.add_argument("--dir", type=Path, default=Path(".haodian/peers"), help="where the links go")
    peers.add_argument("--dialect", choices=["syn6288", "xfs5152"], default="syn6288", help="TTS chip family")

    sim = sub.add_parser(
        "sim",
        help="run a fleet of simulated devices against a broker",
        description="Run N edge agents over simulated hardware against a broker.",
    )
    sim.add_argument("--devices", type=_positive_int, default=10, help="devices (default 10)")
    sim.add_argument("--prefix", default="SIM", help="device id prefix (default SIM)")
    sim.add_argument("--broker-url", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    sim.add_argument(
        "--server-key",
        type=_server_key,
        action="append",
        help="trusted server Ed25519 public key, base64 or @FILE (required without a scenario)",
    )
    sim.add_argument("--base-dir", type=Path, default=Path(".haodian/sim"), help="state and audio folder")
    sim.add_argument("--health-interval", type=_positive_float, default=60.0, help="seconds (default 60)")
    _add_sim_ota_parser(sim)

    pay = sub.add_parser(
        "pay",
        help="send one signed test payment notification to a bridge",
        description="Send one payment notification signed with the development backend key.",
    )
    pay.add_argument("--bridge-url", default="http://127.0.0.1:8000", help="bridge base URL")
    pay.add_argument("--merchant", required=True, help="merchant id")
    pay.add_argument("--amount", required=True, help="amount in yuan, e.g. 12.50")
    pay.add_argument("--channel", default="wechat", choices=["alipay", "wechat", "unionpay", "other"])
    pay.add_argument("--data-dir", type=Path, default=Path(".haodian"), help="where the development keys are")

    keys = sub.add_parser(
        "keys",
        help="create development keys if missing and show the server public key",
        description="Create the development keys in the data folder if missing and print "
        "the server's announce-signing public key (give it to agents with --server-key).",
    )
    keys.add_argument("--data-dir", type=Path, default=Path(".haodian"))
    fleet_cli.add_parser(sub)
    ota_cli.add_parser(sub)
    users_cli.add_parsers(sub)
    trust_cli.add_parsers(sub)
    return parser


def _amount_fen(text: str) -> int:
    from decimal import Decimal, InvalidOperation  # noqa: PLC0415

    try:
        value = Decimal(text)
    except InvalidOperation:
        raise SystemExit(f"haodian pay: amount {text!r} is not a number (e.g. 12.50)") from None
    if value <= 0 or value != value.quantize(Decimal("0.01")):
        raise SystemExit(f"haodian pay: amount {text!r} must be positive with at most 2 decimals")
    return int(value * 100)


async def _run_demo(args: argparse.Namespace) -> int:
    from haodian.demo import DemoOptions, run_demo  # noqa: PLC0415
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


async def _run_server(args: argparse.Namespace) -> int:
    from firmware_protocols.endpoint import BrokerEndpoint  # noqa: PLC0415
    from haodian.embedded import EmbeddedDatabase  # noqa: PLC0415
    from haodian.keys import load_server_keys  # noqa: PLC0415
    from haodian.server import Part, ServerStack, start_embedded_broker  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    try:
        parts = {Part(p.strip()) for p in args.parts.split(",") if p.strip()}
    except ValueError:
        raise SystemExit(f"haodian server: --parts takes fleet, bridge and/or ingest, not {args.parts!r}") from None
    if not parts:
        raise SystemExit("haodian server: --parts names no part")
    if args.workers > 1:
        return await _run_workers(args, {p.value for p in parts})
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["http_host"] = args.host
    if args.port is not None:
        overrides["http_port"] = args.port
    settings = Settings(**overrides)
    keys = load_server_keys(settings)
    async with contextlib.AsyncExitStack() as stack:
        if settings.database_url:
            database_url = settings.database_url
        else:
            database_url = (await stack.enter_async_context(EmbeddedDatabase(settings.data_dir / "pg"))).url
        if settings.mqtt_url:
            endpoint = BrokerEndpoint.from_url(settings.mqtt_url)
        else:
            broker, endpoint = await start_embedded_broker(stack, settings, database_url=database_url, keys=keys)
            if broker.tls_endpoint is not None:
                print(f"embedded MQTT broker: TLS on {broker.tls_endpoint.url()}", flush=True)
        server = await stack.enter_async_context(
            ServerStack(settings, parts=parts, endpoint=endpoint, database_url=database_url, keys=keys)
        )
        print(f"haodian server ({', '.join(sorted(parts))}) on {server.base_url}; broker {endpoint.url()}", flush=True)
        await asyncio.Event().wait()
    return 0


async def _run_workers(args: argparse.Namespace, parts: set[str]) -> int:
    from haodian import workers  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    settings = Settings()
    env = dict(os.environ)
    try:
        port, environments = workers.worker_plan(
            parts=parts, workers=args.workers, port=args.port if args.port is not None else settings.http_port, env=env
        )
    except workers.WorkersError as exc:
        raise SystemExit(f"haodian server: {exc}") from None
    host = args.host or settings.http_host
    command = [
        sys.executable,
        "-m",
        "haodian",
        "--log-level",
        args.log_level,
        "server",
        "--parts",
        ",".join(sorted(parts)),
        "--host",
        host,
        "--port",
        str(port),
    ]
    print(f"haodian server ({', '.join(sorted(parts))}) x {args.workers} workers on http://{host}:{port}", flush=True)
    try:
        return await workers.supervise(command, environments)
    except workers.WorkersError as exc:
        raise SystemExit(f"haodian server: {exc}") from None


async def _run_broker(args: argparse.Namespace) -> int:
    from haodian.embedded import EmbeddedBroker  # noqa: PLC0415

    async with EmbeddedBroker(args.host, args.port) as broker:
        print(f"embedded MQTT broker (amqtt) on {broker.endpoint.url()}", flush=True)
        await asyncio.Event().wait()
    return 0


# `haodian agent run` returns this when the agent asked for its own restart (a remote reboot);
# `main` then replaces the process with a fresh one, as a board's reboot would.
RESTART = 75


def _agent_config(args: argparse.Namespace) -> AgentConfig:
    from edge_agent.config import AgentConfig  # noqa: PLC0415

    return AgentConfig.load(
        args.config,
        device_id=args.device_id,
        broker_url=args.broker_url,
        server_keys=args.server_key,
        state_dir=args.state_dir,
        health_interval_s=args.health_interval,
        tts_port=args.tts_port,
        tts_dialect=args.tts_dialect,
        modem_port=args.modem_port,
        printer_port=args.printer_port,
        audio_device=args.audio_device,
    )


async def _run_agent(args: argparse.Namespace) -> int:
    config = _agent_config(args)
    audio_dir = args.audio_dir or config.state_dir / "audio"
    if args.agent_command == "diagnose":
        return await _diagnose_agent(config, audio_dir, lang=args.lang, as_json=args.json)

    from edge_agent.agent import EdgeAgent  # noqa: PLC0415
    from edge_agent.bootstrap import open_hardware  # noqa: PLC0415

    async with open_hardware(config, audio_dir=audio_dir) as hardware, EdgeAgent(config, **hardware.ports()) as agent:
        speech = f"TTS chip on {config.tts_port}" if config.tts_port else f"audio in {audio_dir}"
        boot = agent.boot
        print(
            f"agent {config.device_id} running; broker {config.broker_url}; {speech}; "
            f"boot {boot.boot_id if boot else '?'} ({boot.reason if boot else '?'})",
            flush=True,
        )
        await agent.restart_requested.wait()
    print(f"agent {config.device_id}: restarting (remote reboot)", flush=True)
    return RESTART


async def _diagnose_agent(config: AgentConfig, audio_dir: Path, *, lang: str, as_json: bool) -> int:
    import json  # noqa: PLC0415
    import time  # noqa: PLC0415

    from edge_agent import diagnose, local_diagnose  # noqa: PLC0415

    language: diagnose.Lang = "en" if lang == "en" else "zh"
    checks, source = await local_diagnose.run(config, audio_dir=audio_dir)
    now_ms = time.time_ns() // 1_000_000
    if as_json:
        report = diagnose.as_json(checks, device_id=config.device_id, lang=language)
        print(json.dumps({**report, "source": source}, ensure_ascii=False, indent=2))
    else:
        print(diagnose.render(checks, device_id=config.device_id, lang=language, now_ms=now_ms))
        print(f"({'数据来源' if language == 'zh' else 'read from'}: {source})")
    return 1 if diagnose.failed(checks) else 0


async def _run_peers(args: argparse.Namespace) -> int:
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


async def _run_sim(args: argparse.Namespace) -> int:
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
    from haodian.settings import Settings  # noqa: PLC0415
    from simulators.ota_campaign import FROM_VERSION, TO_VERSION, OtaSimOptions, run_ota_simulation  # noqa: PLC0415

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
    print(f"好店 OTA 模拟 simulation: {args.devices} devices, {FROM_VERSION} → {TO_VERSION}", flush=True)
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
    print(f"用时 elapsed {report.elapsed_s:.0f} s")
    ok = report.without_working_slot == 0 and not report.mismatched
    return 0 if ok else 1


async def _run_pay(args: argparse.Namespace) -> int:
    import httpx  # noqa: PLC0415

    from firmware_protocols.messages import Channel  # noqa: PLC0415
    from haodian.keys import dev_key_paths, read_rsa_private_key  # noqa: PLC0415
    from simulators.backend import PaymentBackend  # noqa: PLC0415

    amount_fen = _amount_fen(args.amount)
    backend = PaymentBackend(read_rsa_private_key(dev_key_paths(args.data_dir)[1]), args.bridge_url, [args.merchant])
    body, headers = backend.notification(amount_fen=amount_fen, channel=Channel(args.channel))
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            response = await backend.send(client, body, headers)
        except httpx.HTTPError as exc:
            print(f"cannot reach the bridge at {args.bridge_url}: {exc}", file=sys.stderr)
            return 2
    print(response.status_code, response.text)
    return 0 if response.is_success else 1


async def _run_keys(args: argparse.Namespace) -> int:
    from firmware_protocols.signing import encode_public_key  # noqa: PLC0415
    from haodian.keys import dev_key_paths, ensure_dev_keys, read_signing_key  # noqa: PLC0415

    ensure_dev_keys(args.data_dir)
    signing, backend_private, backend_public = dev_key_paths(args.data_dir)
    print(
        f"server announce-signing public key (--server-key): "
        f"{encode_public_key(read_signing_key(signing).public_key())}"
    )
    print(f"development backend keys: {backend_private} (private), {backend_public} (public)")
    return 0


async def _run_fleet(args: argparse.Namespace) -> int:
    return await asyncio.to_thread(fleet_cli.run, args)


async def _run_ota(args: argparse.Namespace) -> int:
    return await asyncio.to_thread(ota_cli.run, args)


async def _run_login(args: argparse.Namespace) -> int:
    return await asyncio.to_thread(users_cli.run_login, args)


async def _run_logout(args: argparse.Namespace) -> int:
    return await asyncio.to_thread(users_cli.run_logout, args)


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "demo": _run_demo,
    "server": _run_server,
    "broker": _run_broker,
    "agent": _run_agent,
    "peers": _run_peers,
    "sim": _run_sim,
    "pay": _run_pay,
    "keys": _run_keys,
    "fleet": _run_fleet,
    "ota": _run_ota,
    "users": users_cli.run_users,
    "login": _run_login,
    "logout": _run_logout,
    "tls": trust_cli.run_tls,
    "broker-config": trust_cli.run_broker_config,
}


async def _until_signalled(command: Coroutine[Any, Any, int]) -> int:
    """Run `command`; SIGTERM (and Ctrl-C) cancel it, so every resource shuts down in order."""
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - always inside asyncio.run.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await command
    except asyncio.CancelledError:
        return 0


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def _event_loop_factory(command: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the server when it is installed (the server extra brings it): the same code,
    about half the event loop's CPU per request and message. `HAODIAN_EVENT_LOOP=asyncio` turns
    it off; the agent and the tools always run on asyncio's own loop."""
    choice = os.environ.get("HAODIAN_EVENT_LOOP", "auto").strip().lower() or "auto"
    if choice not in EVENT_LOOPS:
        raise SystemExit(f"haodian: HAODIAN_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, not {choice!r}")
    if command != "server" or choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional, server-side only
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "haodian: HAODIAN_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["bench"]:
        # Every argument after `bench` is the benchmark's own, -h included.
        from bench.__main__ import main as bench_main  # noqa: PLC0415 - the benchmarks load heavy parts

        return bench_main(raw[1:])
    args = build_parser().parse_args(argv)
    loop_factory = _event_loop_factory(args.command)
    from haodian import logs  # noqa: PLC0415

    if args.command == "demo":
        # The console is for the live summary; the full JSON log goes to a file.
        logs.configure(json=True, level=args.log_level, file=Path(args.data_dir) / "demo" / "demo.log", truncate=True)
    else:
        logs.configure(json=args.command in {"server", "broker"}, level=args.log_level)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            code = runner.run(_until_signalled(COMMANDS[args.command](args)))
    except KeyboardInterrupt:
        return 130
    except AgentError as exc:
        print(f"haodian {args.command}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        problems = "; ".join(f"HAODIAN_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"haodian {args.command}: bad configuration: {problems}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last word to a person: one clear line, not a trace.
        print(f"haodian {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if code == RESTART and args.command == "agent":
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "haodian", *(argv if argv is not None else sys.argv[1:])])  # noqa: S606 - our own command line, again
    return code


if __name__ == "__main__":
    sys.exit(main())
