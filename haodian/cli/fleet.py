"""`haodian fleet ...`: the fleet server's figures, tasks and registry import in a terminal.

A client of the HTTP API (`--server`, default http://127.0.0.1:8000), so it works the same
against the demo, a local server or production.

    haodian fleet summary                       figures of the last 24 h against the targets
    haodian fleet figures --by district --days 30 [--scope city:BJ] [--csv]
    haodian fleet tasks [--open] [--agent A1]
    haodian fleet import registry.csv [--apply]
    haodian fleet provision SPK-0001 [--rotate] [--out agent-secret.toml]
    haodian fleet revoke SPK-0001
    haodian fleet retire SPK-0001 --reason stolen [--note "商户报案"]
    haodian fleet recompute                     rebuild the figure rollups from raw history
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from fleet_server.identity.certs import write_private
from haodian.api_client import checked, open_client
from haodian.cli.kit import api_command
from haodian.cli.output import table

LABELS = {
    "intact_rate": "完好率 intact",
    "fault_rate_per_hour": "故障率 faults/h",
    "fault_rate_downtime": "故障停机 fault downtime",
    "availability_calendar": "可用率 availability (24h)",
    "availability_business": "可用率 availability (business)",
    "mtbf_h": "MTBF h",
    "mttr_min": "MTTR min",
    "power_on_rate": "开机率 power-on",
    "delivery_rate": "到达率 delivery",
    "ota_success_rate": "OTA 成功率 success",
}
STATUS = {"green": "达标 ok", "amber": "接近 near", "red": "未达标 MISS", "none": "-"}
# Figures shown as percentages.
RATES = {
    "intact_rate",
    "fault_rate_downtime",
    "availability_calendar",
    "availability_business",
    "power_on_rate",
    "delivery_rate",
    "ota_success_rate",
}


def add_parser(sub: Any) -> None:
    action = api_command(
        sub,
        "fleet",
        help="fleet figures, tasks and registry import from a running server",
        description="Talk to a running fleet server's API: reliability figures, field-agent tasks, registry import.",
        run=run,
    )
    action.add_parser("summary", help="devices by state and the last 24 h against the targets")
    figures = action.add_parser("figures", help="figures by slice over a window")
    figures.add_argument("--by", choices=["city", "district", "store", "merchant", "device", "model", "firmware"])
    figures.add_argument("--scope", help="LEVEL:VALUE, e.g. district:WJ or model:HD-S1")
    figures.add_argument(
        "--days",
        type=float,
        default=1.0,
        help="window: the last N local days to now (N >= 2, whole), or N x 24 h from a whole hour (default 1)",
    )
    figures.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    tasks = action.add_parser("tasks", help="field-agent tasks")
    tasks.add_argument("--open", action="store_true", help="only tasks not yet closed")
    tasks.add_argument("--agent", help="only this field agent's tasks")
    imp = action.add_parser("import", help="import the registry from CSV (a dry run unless --apply)")
    imp.add_argument("file", type=Path, help="CSV, one row per device")
    imp.add_argument("--apply", action="store_true", help="write the good rows (default: dry run)")
    provision = action.add_parser(
        "provision", help="issue a device its MQTT secret (once; --rotate issues a new one and retires the old)"
    )
    provision.add_argument("device_id")
    provision.add_argument("--rotate", action="store_true", help="issue a new secret; the old one stops working")
    provision.add_argument(
        "--out", type=Path, help="write `device_secret = ...` to this file (owner-only) instead of printing it"
    )
    revoke = action.add_parser("revoke", help="revoke a device's credentials: refused from its next connect")
    revoke.add_argument("device_id")
    retire = action.add_parser(
        "retire",
        help="retire a device for good (遗失 lost, 被盗 stolen, 报废 scrapped): its open tasks close,"
        " its credentials are revoked, it leaves the figures from now",
    )
    retire.add_argument("device_id")
    retire.add_argument("--reason", required=True, choices=["lost", "stolen", "scrapped"], help="why it is retired")
    retire.add_argument("--note", default="", help="a note for the record (the audit log and the closed tasks)")
    action.add_parser(
        "recompute", help="rebuild the figure rollups from raw history and check them against it (ops-admin)"
    )


def fmt(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in RATES:
        return f"{value * 100:.3f}%"
    if name == "fault_rate_per_hour":
        return f"{value:.2e}"
    return f"{value:,.1f}"


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    response = client.get(path, params={k: v for k, v in params.items() if v is not None})
    return checked(response, "haodian fleet")


def run(args: argparse.Namespace) -> int:
    try:
        with open_client(args, timeout=60) as client:
            return _COMMANDS[args.fleet_command](client, args)
    except httpx.TransportError as exc:
        print(f"haodian fleet: 无法连接服务器 cannot reach the server at {args.server}: {exc}", file=sys.stderr)
        return 2


def _summary(client: httpx.Client, _: argparse.Namespace) -> int:
    s = _get(client, "/api/v1/fleet/summary")
    print(f"设备 devices {s['devices']}  在线 online {s['online']}  待办工单 open tasks {s['open_tasks']}")
    print("按状态 by state: " + ", ".join(f"{k} {v}" for k, v in sorted(s["now"]["by_state"].items())))
    print(f"窗口 window {s['window_start'][:19]} .. {s['window_end'][:19]} UTC\n")
    rows = [
        [LABELS[t["name"]], fmt(t["name"], t["value"]), fmt(t["name"], t["target"]), STATUS[t["status"]]]
        for t in s["tiles"]
    ]
    print(table(["指标 figure", "实际 value", "目标 target", "状态 status"], rows))
    return 0


def _since(end: datetime, days: float) -> datetime:
    """The window's start: N whole local days (China time) ending today for N >= 2 days, the
    whole hour N days back otherwise, the windows the server answers from its rollups."""
    if days >= 2 and days == int(days):
        china = timezone(timedelta(hours=8))
        today = end.astimezone(china).replace(hour=0, minute=0, second=0, microsecond=0)
        return (today - timedelta(days=int(days) - 1)).astimezone(UTC)
    return (end - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)


def _figures(client: httpx.Client, args: argparse.Namespace) -> int:
    end = datetime.now(tz=UTC)
    params = {
        "start": _since(end, args.days).isoformat(),
        "end": end.isoformat(),
        "by": args.by,
        "scope": args.scope,
    }
    if args.csv:
        print(_get(client, "/api/v1/figures.csv", **params), end="")
        return 0
    rows = _get(client, "/api/v1/figures", **params)
    names = [
        "availability_calendar",
        "availability_business",
        "intact_rate",
        "mtbf_h",
        "mttr_min",
        "power_on_rate",
        "delivery_rate",
    ]
    print(
        table(
            [args.by or "scope", "设备 devices", "故障 failures", *(LABELS[n] for n in names)],
            [
                [
                    r["key"] or args.scope or "fleet",
                    str(r["devices"]),
                    str(r["failures"]),
                    *(fmt(n, r[n]) for n in names),
                ]
                for r in rows
            ],
        )
    )
    return 0


def _tasks(client: httpx.Client, args: argparse.Namespace) -> int:
    tasks = _get(client, "/api/v1/tasks", open_only=args.open or None, agent_id=args.agent)
    if not tasks:
        print("没有工单 no tasks")
        return 0
    print(
        table(
            [
                "#",
                "设备 device",
                "类型 kind",
                "状态 status",
                "经纪人 agent",
                "置信 conf",
                "开单 opened (UTC)",
                "建议 action",
            ],
            [
                [
                    str(t["task_id"]),
                    t["device_id"],
                    t["kind"],
                    t["status"],
                    t["agent_id"] or "-",
                    f"{t['confidence']:.2f}",
                    t["opened_at"][:19],
                    t["action_zh"],
                ]
                for t in tasks
            ],
        )
    )
    return 0


def _import(client: httpx.Client, args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"haodian fleet import: cannot read {args.file}: {exc}") from None
    response = client.post(
        "/api/v1/registry/import",
        params={"dry_run": str(not args.apply).lower()},
        content=text.encode(),
        headers={"content-type": "text/csv"},
    )
    report = checked(response, "haodian fleet")
    verb = "试运行 dry run" if report["dry_run"] else "已导入 imported"
    print(
        f"{verb}: {report['rows']} 行 rows, {report['valid']} 有效 valid ({report['creates']} new,"
        f" {report['updates']} updated), {report['invalid']} 有误 with errors, {report['applied']} 已写入 written"
    )
    for problem in report["problems"]:
        print(
            f"  第 {problem['line']} 行 line {problem['line']} ({problem['device_id'] or '-'}): "
            + "; ".join(problem["errors"])
        )
    if report["dry_run"] and report["valid"]:
        print("用 --apply 写入 run again with --apply to write the valid rows")
    return 1 if report["invalid"] else 0


def _provision(client: httpx.Client, args: argparse.Namespace) -> int:
    response = client.post(
        f"/api/v1/registry/devices/{args.device_id}/credentials", params={"rotate": str(args.rotate).lower()}
    )
    issued = checked(response, "haodian fleet provision")
    line = f'device_secret = "{issued["device_secret"]}"\n'
    if args.out is not None:
        write_private(args.out, line.encode())
        print(f"已发放 issued: {issued['device_id']} 第 {issued['generation']} 代 generation; secret in {args.out}")
    else:
        print(f"# {issued['device_id']}, generation {issued['generation']}: 仅显示一次 shown once, not kept")
        print(line, end="")
    return 0


def _revoke(client: httpx.Client, args: argparse.Namespace) -> int:
    status = checked(client.post(f"/api/v1/registry/devices/{args.device_id}/credentials/revoke"), "haodian fleet")
    print(f"已吊销 revoked: {status['device_id']} at {status['revoked_at']} (refused from its next connect)")
    return 0


REASONS_ZH = {"lost": "遗失", "stolen": "被盗", "scrapped": "报废"}


def _retire(client: httpx.Client, args: argparse.Namespace) -> int:
    response = client.post(
        f"/api/v1/registry/devices/{args.device_id}/retire", json={"reason": args.reason, "note": args.note}
    )
    done = checked(response, "haodian fleet retire")
    tasks = ", ".join(f"#{t}" for t in done["closed_tasks"]) or "无 none"
    print(
        f"已退役 retired: {done['device_id']} ({REASONS_ZH[done['reason']]} {done['reason']}) at {done['at'][:19]} UTC,"
        f" was {done['previous_state'] or '-'}; 关闭工单 tasks closed: {tasks}; 凭据已吊销 credentials revoked"
    )
    return 0


def _agree(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b)))


def _recompute(client: httpx.Client, _: argparse.Namespace) -> int:
    print("重算中 rebuilding the figure rollups from raw history (a minute at 100,000 devices) ...", flush=True)
    done = checked(client.post("/api/v1/figures/recompute"), "haodian fleet recompute")
    rolled, raw = done["rolled"], done["raw"]
    print(f"已重算 rebuilt up to {done['checkpoint'][:19]} UTC in {done['seconds']:.1f} s")
    names = ["availability_calendar", "intact_rate", "mttr_min", "power_on_rate"]
    rows = [[LABELS[n], fmt(n, rolled[n]), fmt(n, raw[n])] for n in names]
    print(table(["近24小时 last 24 h", "汇总表 rollups", "原始记录 raw history"], rows))
    same = all(
        rolled[n] == raw[n] or (rolled[n] is not None and raw[n] is not None and abs(rolled[n] - raw[n]) < 1e-9)
        for n in names
    )
    print("一致 they agree" if same else "不一致 THEY DISAGREE: report this")
    return 0 if same else 1


_COMMANDS = {
    "summary": _summary,
    "figures": _figures,
    "tasks": _tasks,
    "import": _import,
    "provision": _provision,
    "revoke": _revoke,
    "retire": _retire,
    "recompute": _recompute,
}
