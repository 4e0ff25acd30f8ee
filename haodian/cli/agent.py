"""`haodian agent run|diagnose`: the edge agent of one device, and the field agent's checklist.

Imports nothing server-side: this is what a device runs, with the base dependencies only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haodian.cli.kit import RESTART, positive_float, server_key

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig


def add_parser(sub: Any) -> None:
    agent = sub.add_parser(
        "agent",
        help="the edge agent of one device: run it, or diagnose the device",
        description="The edge agent of one device. `run` runs it; `diagnose` prints the field agent's "
        "checklist. Both read the same configuration: a TOML file (--config) and/or flags. "
        "设备端程序：run 运行，diagnose 自检。",
    )
    agent.set_defaults(run=run)
    agent_sub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--config", type=Path, default=None, help="agent configuration file (TOML)")
    device.add_argument("--device-id", default=None, help="device id, e.g. SPK0001")
    device.add_argument(
        "--broker-url", default=None, help="mqtt[s]://[user[:pass]@]host[:port] (default mqtt://127.0.0.1:1883)"
    )
    device.add_argument(
        "--server-key",
        type=server_key,
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
        "--health-interval", type=positive_float, default=None, help="seconds between health reports (default 60)"
    )
    device.add_argument("--tts-port", default=None, help="TTS chip serial port (default: none, voice clips)")
    device.add_argument(
        "--tts-dialect", choices=["syn6288", "xfs5152"], default=None, help="TTS chip family (default syn6288)"
    )
    device.add_argument("--modem-port", default=None, help="4G modem AT port (default: none, simulated modem)")
    device.add_argument("--printer-port", default=None, help="ESC/POS printer serial port (default: none)")
    device.add_argument("--audio-device", default=None, help="ALSA device for voice clips, e.g. default or hw:0")
    device.add_argument(
        "--time-url",
        default=None,
        help="the fleet server's signed time, e.g. https://fleet.example.com/api/v1/time (a time source"
        " that works before the device can connect)",
    )
    device.add_argument(
        "--ntp-server", action="append", default=None, help="an NTP server host[:port] to ask (repeat for more)"
    )
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
        time_url=args.time_url,
        ntp_servers=args.ntp_server,
    )


async def run(args: argparse.Namespace) -> int:
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
