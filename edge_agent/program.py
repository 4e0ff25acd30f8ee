"""The agent program: `python -m edge_agent [options]`, what the launcher starts from a slot.

`haodian agent run` is the launcher (`launcher`): it chooses the slot and starts this program
with the slot's code first on the path, so everything from here on is the code the slot holds:
an update changes it. The options are those of `haodian agent run` (`device_arguments`, the
one parser both use). The launcher says which boot this is in `HAODIAN_AGENT_BOOT`; run by
hand, without it, the program chooses the slot itself (its code is then the installed one).

Exit status: 0 stopped (SIGTERM), 75 a restart asked for (a remote reboot, an update's switch
of slot, a rollback), 2 a bad configuration or a state folder already in use, 1 a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError
from edge_agent.ota.slots import BootChoice

log = structlog.get_logger(__name__)

RESTART = 75  # the agent asked for its own restart
BAD_CONFIG = 2


def device_arguments() -> argparse.ArgumentParser:
    """The options of one device's agent (a parent parser: `haodian agent run|diagnose` and this
    program)."""
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
    return device


def config_from(args: argparse.Namespace) -> AgentConfig:
    """The configuration the options name: the TOML file (--config) with the flags on top."""
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


async def run_agent(
    config: AgentConfig, audio_dir: Path, *, booted: BootChoice | None = None, say: Callable[[str], None] = print
) -> int:
    """Run the agent until it asks for a restart (RESTART) or is cancelled."""
    from edge_agent.agent import BUILD_ID, EdgeAgent  # noqa: PLC0415 - after the logs are set up
    from edge_agent.bootstrap import open_hardware  # noqa: PLC0415

    async with (
        open_hardware(config, audio_dir=audio_dir) as hardware,
        EdgeAgent(config, booted=booted, **hardware.ports()) as agent,
    ):
        speech = f"TTS chip on {config.tts_port}" if config.tts_port else f"audio in {audio_dir}"
        boot = agent.boot
        code = f"build {BUILD_ID}" if BUILD_ID else "installed package"
        boot_text = f"{boot.boot_id} ({boot.reason})" if boot else "?"
        say(
            f"agent {config.device_id} running {agent.config.firmware} on slot {agent.config.slot} ({code}); "
            f"broker {config.broker_url}; {speech}; boot {boot_text}"
        )
        await agent.restart_requested.wait()
    say(f"agent {config.device_id}: restarting")
    return RESTART


def main(argv: Sequence[str] | None = None) -> int:
    from edge_agent import launcher, logbook  # noqa: PLC0415
    from mqtt_link.tasks import until_signalled  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m edge_agent",
        parents=[device_arguments()],
        description="The edge agent of one device, as its slot runs it (`haodian agent run` starts it).",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logbook.configure(json=False, level=args.log_level)
    booted = launcher.follow_launcher()
    try:
        config = config_from(args)
        audio_dir = args.audio_dir or config.state_dir / "audio"
        return asyncio.run(until_signalled(run_agent(config, audio_dir, booted=booted, say=_say)))
    except KeyboardInterrupt:
        return 130
    except AgentError as exc:
        sys.stderr.write(f"agent: {exc}\n")
        return BAD_CONFIG
    except Exception as exc:
        log.exception("agent crashed")
        sys.stderr.write(f"agent: {type(exc).__name__}: {exc}\n")
        return 1


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def server_key(text: str) -> str:
    """A base64 Ed25519 public key, or @FILE holding one."""
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read server key file {text[1:]}: {exc}") from exc
    return text


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value
