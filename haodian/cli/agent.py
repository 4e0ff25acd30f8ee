"""`haodian agent run|diagnose`: the edge agent of one device, and the field agent's checklist.

Imports nothing server-side: this is what a device runs, with the base dependencies only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.program import config_from, device_arguments

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
    device = device_arguments()
    agent_sub.add_parser(
        "run",
        parents=[device],
        help="run the agent on real or simulated hardware",
        description="Run the edge agent of one device. Speech goes to the TTS chip on --tts-port, "
        "else voice clips to ALSA --audio-device, else WAV files in --audio-dir (the simulated "
        "speaker). Serial ports may be devices (/dev/ttyS1) or the links `haodian peers` makes. "
        "This process is the launcher: it runs the agent (python -m edge_agent) from the slot the "
        "boot control chooses, so an update's code is what runs, and starts it again after a remote "
        "reboot, an update or a crash. 运行设备端程序（从当前固件槽启动，升级后运行新版本）。",
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


async def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    audio_dir = args.audio_dir or config.state_dir / "audio"
    if args.agent_command == "diagnose":
        return await _diagnose_agent(config, audio_dir, lang=args.lang, as_json=args.json)

    from edge_agent.launcher import Launcher  # noqa: PLC0415

    # The agent program takes the options `agent run` was given, and the log level.
    raw: list[str] = args.raw_argv
    options = raw[raw.index("run", raw.index("agent")) + 1 :]
    launcher = Launcher(config, [*options, "--log-level", args.log_level])
    print(f"agent {config.device_id}: launcher started; state {config.state_dir}", flush=True)
    return await launcher.run()


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
