"""`haodian ota ...`: releases and campaigns from a terminal.

The release key is made and used offline (`release-key`, `sign`); everything else is a client
of a running fleet server's API (`--server`, default http://127.0.0.1:8000).

    haodian ota release-key --out keys/                       a new Ed25519 release key pair
    haodian ota build --version 1.5.0 --out dist/agent-1.5.0.zip   the agent software as an artifact
    haodian ota sign --key keys/release.key --artifact fw.bin --name haodian-speaker \\
        --version 1.5.0 --models HD-S1,HD-S2 [--min-version 1.2.0] [--days 30] > fw.manifest.json
    haodian ota upload --manifest fw.manifest.json --artifact fw.bin
    haodian ota start --release haodian-speaker --version 1.5.0 [--models HD-S1] [--waves 1,5,25,100]
        [--window 02:00-05:00|now] [--max-rate 65536] [--device-timeout 3600] [--max-attempts 3]
        [--wave-success 0.95] [--pause-failure-rate 0.02] [--pause-min-devices 20]
    haodian ota campaigns | show ID | pause ID | resume ID | abort ID | retry ID
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from firmware_protocols.ota import ReleaseManifest, sign_manifest
from firmware_protocols.signing import encode_public_key
from haodian.api_client import checked, open_client
from haodian.cli.kit import api_command, fraction
from haodian.cli.output import table

STATES_ZH = {
    "pending": "未下发 pending",
    "offered": "已下发 offered",
    "queued": "排队 queued",
    "downloading": "下载中 downloading",
    "verifying": "校验 verifying",
    "waiting_window": "等待窗口 waiting window",
    "installing": "安装中 installing",
    "rebooting": "重启 rebooting",
    "health_check": "自检 health check",
    "committed": "已升级 committed",
    "rolled_back": "已回滚 rolled back",
    "failed": "失败 failed",
    "unreachable": "离线 unreachable",
}


def add_parser(sub: Any) -> None:
    action = api_command(
        sub,
        "ota",
        help="firmware releases and OTA campaigns / 固件发布与升级",
        description="Make and sign releases (offline), upload them, and run OTA campaigns on a fleet server.",
        run=run,
    )
    key = action.add_parser("release-key", help="create a release key pair (keep the private key offline)")
    key.add_argument("--out", type=Path, required=True, help="folder for release.key and release.pub")
    build = action.add_parser(
        "build",
        help="build the agent software as an update artifact / 打包设备端程序",
        description="Pack the agent's packages (edge_agent with its voice pack, firmware_protocols, "
        "mqtt_link) and a build manifest into a zip that devices unpack into a slot and run.",
    )
    build.add_argument("--version", required=True, help="MAJOR.MINOR.PATCH the build reports")
    build.add_argument("--out", type=Path, required=True, help="the artifact to write, e.g. dist/agent-1.5.0.zip")
    build.add_argument(
        "--source", type=Path, default=None, help="folder holding the packages (default: where this haodian runs from)"
    )
    sign = action.add_parser("sign", help="write the signed manifest of an artifact to stdout")
    sign.add_argument("--key", type=Path, required=True, help="the release private key (raw 32 bytes, base64)")
    sign.add_argument("--artifact", type=Path, required=True)
    sign.add_argument("--name", required=True, help="package name, e.g. haodian-speaker")
    sign.add_argument("--version", required=True, help="MAJOR.MINOR.PATCH")
    sign.add_argument("--models", required=True, help="comma-separated device models")
    sign.add_argument("--min-version", default=None, help="oldest version it may be installed over")
    sign.add_argument("--days", type=float, default=30.0, help="valid this many days (default 30)")
    upload = action.add_parser("upload", help="register a signed manifest and upload its artifact")
    upload.add_argument("--manifest", type=Path, required=True)
    upload.add_argument("--artifact", type=Path, required=True)
    start = action.add_parser("start", help="start a campaign")
    start.add_argument("--release", required=True, help="release name")
    start.add_argument("--version", required=True)
    for name in ("models", "versions", "cities", "districts", "stores", "tags", "devices"):
        start.add_argument(f"--{name}", default="", help=f"comma-separated {name} to target (default: all)")
    start.add_argument("--waves", default="1,5,25,100", help="cumulative percentages (default 1,5,25,100)")
    start.add_argument(
        "--window", default="02:00-05:00", help="install window, local time, or 'now' (default 02:00-05:00)"
    )
    start.add_argument("--id", default=None, help="campaign id (default: generated)")
    for flag, kind, what in (
        ("--max-rate", int, "download rate cap per device, bytes/s (default 131072)"),
        ("--device-timeout", int, "seconds without news before a device is offered again (default 3600)"),
        ("--max-attempts", int, "offers per device for failures that are not the release's (default 3)"),
        ("--wave-success", fraction, "share of a wave that must commit before the next (default 0.95)"),
        ("--pause-failure-rate", fraction, "release failures that pause a lane, as a share (default 0.02)"),
        ("--pause-min-devices", int, "devices ended before the failure rate may pause a lane (default 20)"),
    ):
        start.add_argument(flag, type=kind, default=None, help=what)
    action.add_parser("campaigns", help="every campaign with its progress")
    for name in ("show", "pause", "resume", "abort", "retry"):
        one = action.add_parser(name, help=f"{name} one campaign" if name != "show" else "one campaign's progress")
        one.add_argument("campaign_id")


def run(args: argparse.Namespace) -> int:
    if args.ota_command == "release-key":
        return _release_key(args.out)
    if args.ota_command == "sign":
        return _sign(args)
    if args.ota_command == "build":
        return _build(args)
    try:
        with open_client(args, timeout=300) as client:
            return _online(client, args)
    except httpx.TransportError as exc:
        print(f"haodian ota: 无法连接服务器 cannot reach the server at {args.server}: {exc}", file=sys.stderr)
        return 2


def _release_key(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    private = out / "release.key"
    if private.exists():
        raise SystemExit(f"haodian ota: {private} exists; not overwriting a release key")
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    private.write_text(base64.b64encode(raw).decode() + "\n", encoding="utf-8")
    private.chmod(0o600)
    public = encode_public_key(key.public_key())
    (out / "release.pub").write_text(public + "\n", encoding="utf-8")
    print(f"release key: {private} (private: keep it offline)\npublic key: {public}")
    print("give the public key to devices (release_keys) and to the server (HAODIAN_OTA_RELEASE_KEYS)")
    return 0


def _build(args: argparse.Namespace) -> int:
    import edge_agent  # noqa: PLC0415
    from edge_agent.ota.builds import BuildError, build_agent  # noqa: PLC0415
    from firmware_protocols.errors import ManifestError  # noqa: PLC0415

    source = args.source or Path(edge_agent.__file__).resolve().parent.parent
    try:
        built = build_agent(source, args.version, args.out)
    except (BuildError, ManifestError, OSError) as exc:
        raise SystemExit(f"haodian ota build: {exc}") from exc
    size = args.out.stat().st_size
    print(f"已打包 built {args.out}: agent {built.version}, build {built.build_id}, "
          f"{built.files} files, {size:,} bytes")  # fmt: skip
    print(f"next: haodian ota sign --key KEY --artifact {args.out} --name haodian-speaker --version {built.version} "
          "--models MODELS > manifest.json")  # fmt: skip
    return 0


def _sign(args: argparse.Namespace) -> int:
    try:
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(args.key.read_text(encoding="utf-8").strip()))
        data = args.artifact.read_bytes()
    except (OSError, ValueError) as exc:
        raise SystemExit(f"haodian ota sign: {exc}") from exc
    now_ms = time.time_ns() // 1_000_000
    manifest = ReleaseManifest(
        name=args.name,
        version=args.version,
        models=[m for m in args.models.split(",") if m],
        min_version=args.min_version,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        issued_at=now_ms,
        expires_at=now_ms + int(args.days * 86_400_000),
    )
    print(json.dumps(sign_manifest(manifest, key).model_dump(mode="json", exclude_none=True), indent=2))
    return 0


def _checked(response: httpx.Response) -> Any:
    return checked(response, "haodian ota")


def _online(client: httpx.Client, args: argparse.Namespace) -> int:
    command = args.ota_command
    if command == "upload":
        try:
            manifest = json.loads(args.manifest.read_text(encoding="utf-8"))
            data = args.artifact.read_bytes()
        except (OSError, ValueError) as exc:
            raise SystemExit(f"haodian ota upload: {exc}") from exc
        release = _checked(client.post("/api/v1/ota/releases", json=manifest))
        url = f"/api/v1/ota/releases/{release['name']}/{release['version']}/artifact"
        _checked(client.put(url, content=data, headers={"content-type": "application/octet-stream"}))
        print(
            f"已上传 uploaded {release['name']} {release['version']} ({len(data):,} bytes, sha256 {release['sha256']})"
        )
        return 0
    if command == "start":
        body = {
            "release_name": args.release,
            "version": args.version,
            "campaign_id": args.id,
            "target": {
                n: [v for v in getattr(args, n).split(",") if v]
                for n in ("models", "versions", "cities", "districts", "stores", "tags", "devices")
            },
            "policy": {
                "waves": [float(w) / 100 for w in args.waves.split(",")],
                "window": _window(args.window),
                **{
                    key: value
                    for key, value in (
                        ("max_rate_bps", args.max_rate),
                        ("device_timeout_s", args.device_timeout),
                        ("max_attempts", args.max_attempts),
                        ("wave_success", args.wave_success),
                        ("pause_failure_rate", args.pause_failure_rate),
                        ("pause_min_devices", args.pause_min_devices),
                    )
                    if value is not None
                },
            },
        }
        _show(_checked(client.post("/api/v1/ota/campaigns", json=body)))
        return 0
    if command == "campaigns":
        campaigns = _checked(client.get("/api/v1/ota/campaigns"))
        if not campaigns:
            print("没有升级活动 no campaigns")
        rows = [
            [
                c["campaign_id"],
                f"{c['release_name']} {c['version']}",
                c["status"],
                str(c["targeted"]),
                str(c["committed"]),
                _pct(c["success_rate"]),
            ]
            for c in campaigns
        ]
        if rows:
            print(table(["活动 campaign", "版本 release", "状态 status", "目标 targeted", "已升级 committed",
                         "成功率 success"], rows))  # fmt: skip
        return 0
    path = f"/api/v1/ota/campaigns/{args.campaign_id}"
    _show(_checked(client.get(path) if command == "show" else client.post(f"{path}/{command}")))
    return 0


def _window(text: str) -> dict[str, str] | None:
    if text == "now":
        return None
    start, _, end = text.partition("-")
    return {"start": start, "end": end}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _show(c: dict[str, Any]) -> None:
    print(f"活动 campaign {c['campaign_id']}: {c['release_name']} {c['version']} — {c['status']}"
          + (f" ({c['status_reason']})" if c["status_reason"] else ""))  # fmt: skip
    eta = "-" if c["eta_s"] is None else f"{c['eta_s'] / 60:.0f} min"
    print(f"目标 targeted {c['targeted']}, 已升级 committed {c['committed']} ({_pct(c['success_rate'])}), "
          f"离线 unreachable {c['unreachable']}, 预计 ETA {eta}")  # fmt: skip
    if c.get("not_offered") or c.get("interrupted"):
        print(f"未下发 never offered {c.get('not_offered', 0)} (not counted in the success rate), "
              f"断电/中断后重试 trial boots interrupted and retried {c.get('interrupted', 0)}")  # fmt: skip
    states = sorted({s for lane in c["lanes"] for s in lane["by_state"]}, key=list(STATES_ZH).index)
    rows = [
        [
            lane["model"],
            f"{lane['wave']}/{lane['waves']}",
            lane["status"] + (f": {lane['status_reason']}" if lane["status_reason"] else ""),
            *(str(lane["by_state"].get(s, 0)) for s in states),
        ]
        for lane in c["lanes"]
    ]
    print(table(["型号 model", "波次 wave", "通道 lane", *(STATES_ZH.get(s, s) for s in states)], rows))
    if c["failures"]:
        print("失败原因 failures: " + ", ".join(f"{k} {v}" for k, v in sorted(c["failures"].items())))
