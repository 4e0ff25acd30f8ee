"""`haodian`: one command for the demo, the servers, an agent, the simulators and the clients
of the fleet API. Each command group is a module here with `add_parser(sub)`, which names the
coroutine that runs it (`set_defaults(run=...)`); `main` parses, sets up logging, and runs it on
the right event loop until it ends or is signalled.

    demo     the demo                        server   the servers, workers, the embedded broker
    agent    a device's agent, diagnose      sim      simulated fleets, the OTA scenario, serial peers
    dev      test payments, development keys fleet    figures, tasks, registry, provisioning
    ota      releases and campaigns          users    accounts, sign-in
    trust    TLS material, broker config     bench    the benchmarks

Server-side imports are made inside the commands, so `haodian agent` runs on a device with only
the base (agent) dependencies installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from pydantic import ValidationError

from edge_agent.errors import AgentError
from haodian.cli import agent, bench, demo, dev, fleet, ota, server, sim, trust, users
from haodian.cli.kit import event_loop_factory, until_signalled

log = structlog.get_logger("haodian.cli")

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


# In the order `haodian -h` lists them.
GROUPS = (demo, server, bench, agent, sim, dev, fleet, ota, users, trust)


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
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["bench"]:
        # Every argument after `bench` is the benchmark's own, -h included.
        # The benchmarks are their own program above the shell (they start its servers), so
        # the shell hands the process over to them rather than importing them.
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "bench", *raw[1:]])  # noqa: S606 - our own benchmarks
    args = build_parser().parse_args(argv)
    args.raw_argv = raw
    loop_factory = event_loop_factory(args.command)
    from haodian import logs  # noqa: PLC0415

    if args.command == "demo":
        # The console is for the live summary; the full JSON log goes to a file.
        logs.configure(json=True, level=args.log_level, file=Path(args.data_dir) / "demo" / "demo.log", truncate=True)
    else:
        logs.configure(json=args.command in {"server", "broker"}, level=args.log_level)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            code = runner.run(until_signalled(args.run(args)))
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
    except Exception as exc:
        # The trace goes to the log, for whoever finds out why (a disk-full agent once exited
        # with only "OSError: [Errno 28]" to show where).
        log.exception("command failed", command=args.command)
        print(f"haodian {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
