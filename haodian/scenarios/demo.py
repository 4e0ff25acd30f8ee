"""`haodian demo`: the whole path on one machine, with nothing installed but Python packages.

Embedded broker and database, fleet server and bridge, N simulated devices running the real
edge agent, and a simulated backend sending signed notifications at a steady rate. Prints a
live one-line summary and writes the final one as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from fleet_server.auth.roles import Role
from fleet_server.auth.store import AuthStore
from haodian.embedded import EmbeddedDatabase
from haodian.keys import ServerKeys, dev_key_paths, load_server_keys, read_rsa_private_key
from haodian.scenarios.clock_demo import clocks_for, show_clock_recovery
from haodian.server import Part, ServerStack, start_embedded_broker
from haodian.settings import Settings
from payment_bridge.store import DeliverySummary
from simulators.backend import PaymentBackend
from simulators.fleet import SimulatedFleet, fleet_device_ids

# After the last payment, wait this long at most for its acks (retries included).
DRAIN_TIMEOUT_S = 30.0
# Time for a moved and a stolen device to be found: a few health reports from the new cell,
# and the demo's "lost after" of 15 s.
INCIDENT_TIMEOUT_S = 60.0
# `--stay` keeps the demo serving until Ctrl-C; a week of payments is "until stopped".
STAY_S = 7 * 86400.0


@dataclass(frozen=True)
class DemoOptions:
    devices: int
    tps: float
    duration_s: float
    report: Path
    data_dir: Path
    http_port: int
    health_interval_s: float = 5.0
    serial_devices: int = 0
    stay: bool = False


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_line(online: int, devices: int, s: DeliverySummary) -> str:
    # Announcements still in flight are neither delivered nor missed yet: the live rate is over
    # the settled ones; the report's final rate is over all of them.
    settled = s.deliveries - s.pending
    rate = "-" if not settled else f"{s.delivered / settled * 100:.2f}%"
    in_flight = f" (+{s.pending} 播报中 in flight)" if s.pending else ""
    return (
        f"在线 online {online}/{devices} | 支付 payments {s.payments} | "
        f"已播报 announced {s.delivered}/{settled}{in_flight} | 到达率 delivery {rate} | "
        f"延迟 latency p50 {_fmt(s.latency_ms.p50)} ms p99 {_fmt(s.latency_ms.p99)} ms"
    )


class _Api:
    """The calls the demo makes to the server's HTTP API, as any client would."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str) -> None:
        self._client = client
        self._base = base_url
        self._headers = {"authorization": f"Bearer {token}"}

    async def import_registry(self, csv_text: str) -> dict[str, Any]:
        response = await self._client.post(
            f"{self._base}/api/v1/registry/import",
            params={"dry_run": "false"},
            content=csv_text.encode(),
            headers={"content-type": "text/csv", **self._headers},
        )
        response.raise_for_status()
        report: dict[str, Any] = response.json()
        if report["invalid"]:
            raise RuntimeError(f"demo registry did not import: {report['problems'][:3]}")
        return report

    async def tasks(self) -> list[dict[str, Any]]:
        response = await self._client.get(
            f"{self._base}/api/v1/tasks", params={"open_only": "true"}, headers=self._headers
        )
        response.raise_for_status()
        tasks: list[dict[str, Any]] = response.json()
        return tasks

    async def summary(self) -> DeliverySummary:
        response = await self._client.get(f"{self._base}/api/v1/deliveries/summary", headers=self._headers)
        response.raise_for_status()
        return DeliverySummary.model_validate(response.json())

    async def online(self) -> int:
        response = await self._client.get(f"{self._base}/api/v1/fleet/summary", headers=self._headers)
        response.raise_for_status()
        return int(response.json()["online"])


DISTRICTS = (("WJ", "望京"), ("HLG", "回龙观"), ("TTY", "天通苑"))
# The demo's people, one per role, to sign in to the pages with: (login, role, account fields).
DEMO_ACCOUNTS: tuple[tuple[str, Role, dict[str, Any]], ...] = (
    ("ops", Role.OPS_ADMIN, {"name": "运营 王工"}),
    ("viewer", Role.OPS_VIEWER, {"name": "运营 查看"}),
    ("agent-wj", Role.FIELD_AGENT, {"name": "望京经纪人", "agent_id": "A-WJ", "stores": ["S-WJ"]}),
    ("merchant1", Role.MERCHANT, {"name": "商户1", "merchant_id": "M00001"}),
)


async def demo_accounts(auth: AuthStore) -> tuple[str, str]:
    """Create the demo's accounts with one fresh password; (password, the runner's own API token)."""
    password = secrets.token_urlsafe(9)
    for login, role, fields in DEMO_ACCOUNTS:
        await auth.create_user(login, role=role, password=password, **fields)
    return password, await auth.service_token("demo-runner", Role.OPS_ADMIN)


def open_browser(url: str) -> bool:
    """Open the dashboard where there is a screen to show it on (not over SSH or in CI, where a
    text browser would take over the terminal)."""
    import webbrowser  # noqa: PLC0415

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def registry_csv(bindings: dict[str, str]) -> str:
    """The demo fleet's registry: Beijing, three districts (商圈), a store and a field agent in
    each, the merchants and their devices installed yesterday near the store."""
    lines = [
        "city_id,city_name,district_id,district_name,store_id,store_name,agent_id,agent_name,merchant_id,"
        "merchant_name,device_id,serial,model,installed_at,install_lat,install_lon,merchant_contact,merchant_phone"
    ]
    installed = (datetime.now(tz=UTC) - timedelta(days=1)).isoformat(timespec="seconds")
    for device_id, merchant_id in sorted(bindings.items()):
        n = int(merchant_id[1:])
        district, name = DISTRICTS[n % len(DISTRICTS)]
        lines.append(
            f"BJ,北京,{district},{name},S-{district},{name}店,A-{district},{name}经纪人,{merchant_id},商户{n},"
            f"{device_id},HD{device_id},HD-S1,{installed},{39.99 + n * 0.001:.4f},{116.47 + n * 0.001:.4f},"
            f"王{n},138{n:08d}"  # made-up contacts (the demo's merchants are not real)
        )
    return "\n".join(lines) + "\n"


def _pick_incidents(bindings: dict[str, str], movable: set[str]) -> tuple[str | None, str | None]:
    """(device to move, device to steal): the moved one has a simulated modem to carry; the
    stolen one's merchant keeps another speaker, so every payment is still announced somewhere."""
    by_merchant: dict[str, list[str]] = {}
    for device, merchant in sorted(bindings.items()):
        by_merchant.setdefault(merchant, []).append(device)
    shared = [devices[-1] for devices in by_merchant.values() if len(devices) > 1]
    moved = min(movable, default=None)
    stolen = next((d for d in shared if d != moved), None)
    return moved, stolen


async def _incidents(fleet: SimulatedFleet, api: _Api, bindings: dict[str, str], timeout_s: float) -> list[Any]:
    """One device carried across town, one stolen: both must turn into tasks for field agents."""
    moved, stolen = _pick_incidents(bindings, set(fleet.modems))
    if moved is None or stolen is None:
        print("  巡检演示需要更多设备 inspection demo skipped: too few devices to move and steal one")
        return []
    fleet.move(moved, "9F00", "ABCDE1", gps=(40.07, 116.33))
    await fleet.power_off(stolen)
    print(f"  巡检 inspection: {moved} 被移到别处 carried across town; {stolen} 被盗 stolen (switched off for good)")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = await api.tasks()
        found = {(t["device_id"], t["kind"]) for t in tasks}
        if {(moved, "relocated"), (stolen, "lost")} <= found:
            break
        await asyncio.sleep(1.0)
    else:
        print(f"  巡检 inspection: not every incident became a task within {timeout_s:.0f} s")
    tasks = await api.tasks()
    for t in tasks:
        print(
            f"  工单 task #{t['task_id']} {t['device_id']} {t['kind']} (confidence {t['confidence']:.2f})"
            f" → {t['agent_id']}: {t['action_zh']}"
        )
    return tasks


def merchants_for(device_ids: list[str]) -> dict[str, str]:
    """device → merchant: most merchants have one speaker, every fifth has two."""
    merchant_count = max(1, round(len(device_ids) * 0.8))
    return {device: f"M{(i % merchant_count) + 1:05d}" for i, device in enumerate(device_ids)}


async def _introduce(server: ServerStack, *, tty: bool) -> tuple[str, str]:
    """Create the demo's accounts and say where the pages are; (dashboard URL, the runner's token)."""
    password, runner_token = await demo_accounts(server.auth)
    dashboard = f"{server.base_url}/login?next=/ops"
    print(f"  运营看板 dashboard {dashboard}   API {server.base_url}/api/v1   OpenAPI {server.base_url}/openapi.json")
    print(
        f"  登录 sign in: {', '.join(login for login, _, _ in DEMO_ACCOUNTS)} (ops-admin, ops-viewer, field agent"
        f" of 望京 S-WJ, merchant M00001); 密码 password {password}"
    )
    if tty and open_browser(dashboard):
        print("  看板已在浏览器中打开 dashboard opened in your browser")
    return dashboard, runner_token


def _write_report(path: Path, report: dict[str, Any], final: DeliverySummary) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"report written to {path}")
    if final.delivery_rate != 1.0:
        print(
            f"未全部播报 not every announcement was delivered: {final.delivered}/{final.deliveries},"
            f" {final.missed} missed, {final.pending} pending; see {path} and the log"
        )


def demo_settings(options: DemoOptions, settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "data_dir": options.data_dir,
            "http_port": options.http_port,
            "signing_key_file": None,
            "backend_public_key_file": None,
            # Inspection in demo time: heartbeats every health interval, a device lost after 15 s
            # off, a location fingerprint learned in the first 10 s, a round every 2 s.
            "inspection": settings.inspection.model_copy(
                update={
                    "heartbeat_interval_s": options.health_interval_s,
                    "lost_after_days": 15 / 86400,
                    "interval_s": 2.0,
                }
            ),
            "cell_learning_days": 10 / 86400,
        }
    )


async def _services(
    stack: contextlib.AsyncExitStack, options: DemoOptions, settings: Settings, keys: ServerKeys
) -> tuple[ServerStack, dict[str, bytes]]:
    """The embedded database and broker and the server, on `stack`; and the simulated devices'
    secrets. Every simulated device is provisioned as a real one is: its own secret, and the
    broker lets it reach its own topics only."""
    database = await stack.enter_async_context(EmbeddedDatabase(options.data_dir / "pg", "haodian_demo", fresh=True))
    broker, endpoint = await start_embedded_broker(stack, settings, database_url=database.url, keys=keys)
    server = await stack.enter_async_context(
        ServerStack(settings, parts={Part.FLEET, Part.BRIDGE}, endpoint=endpoint, database_url=database.url, keys=keys)
    )
    control = "devices signed in, own topics only" if broker.authority else "open"
    print(f"  broker {broker.endpoint.url()} (amqtt, embedded; {control})  database {database.url} (embedded)")
    assert server.credentials is not None  # noqa: S101 - the fleet part runs here.
    return server, await server.credentials.provision_many(fleet_device_ids(options.devices), by="demo")


async def run_demo(options: DemoOptions, settings: Settings) -> dict[str, Any]:
    out = options.data_dir / "demo"
    # The demo's simulated backend signs with the development key pair, so the server must use
    # the development keys too (created on first use), whatever the environment says.
    settings = demo_settings(options, settings)
    keys = load_server_keys(settings)
    backend_key = read_rsa_private_key(dev_key_paths(options.data_dir)[1])
    tty = sys.stdout.isatty()
    print(f"好店 demo: {options.devices} devices, {options.tps} payments/s for {options.duration_s:.0f} s")
    print(f"  data folder {out.resolve()}")

    async with contextlib.AsyncExitStack() as stack:
        server, device_secrets = await _services(stack, options, settings, keys)
        dashboard, runner_token = await _introduce(server, tty=tty)
        # Keep the audio of this run only: a demo writes a WAV per announcement.
        for previous in out.glob("*T*Z"):
            shutil.rmtree(previous, ignore_errors=True)
        run_dir = out / datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        async with (
            SimulatedFleet(
                options.devices,
                broker_url=f"mqtt://{server.endpoint.host}:{server.endpoint.port}",
                server_keys=[keys.server_public_key_b64],
                base_dir=run_dir,
                health_interval_s=options.health_interval_s,
                serial_devices=options.serial_devices,
                device_secrets=device_secrets,
                clocks=clocks_for(fleet_device_ids(options.devices)),
            ) as fleet,
            httpx.AsyncClient(timeout=10.0) as client,
        ):
            await fleet.wait_connected(30)
            bindings = merchants_for(fleet.device_ids)
            api = _Api(client, server.base_url, runner_token)
            await api.import_registry(registry_csv(bindings))
            print(
                f"  {len(fleet.device_ids)} devices online, bound to {len(set(bindings.values()))} merchants;"
                f" audio in {(run_dir / 'audio').resolve()}"
            )
            await show_clock_recovery(fleet)
            if fleet.peers:
                print(
                    f"  {len(fleet.peers)} POS terminals speak through a TTS chip and print on a printer, both"
                    f" virtual on pseudo-terminals (串口外设): {(run_dir / 'peers').resolve()}"
                )

            async def show(*, final: bool = False) -> DeliverySummary:
                s = await api.summary()
                line = summary_line(await api.online(), options.devices, s)
                if tty and not final:
                    print("\r" + line + " " * 4, end="", flush=True)
                else:
                    print(line, flush=True)
                return s

            backend = PaymentBackend(backend_key, server.base_url, sorted(set(bindings.values())))
            started = time.monotonic()
            sender = asyncio.create_task(backend.run(client, rate_per_s=options.tps, duration_s=options.duration_s))
            next_line = 0.0
            while not sender.done():
                await asyncio.sleep(0.25)
                if tty or time.monotonic() - started >= next_line:
                    await show()
                    next_line += 5.0
            backend_stats = await sender
            drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while (await api.summary()).pending and time.monotonic() < drain_deadline:  # noqa: ASYNC110 - polls the API.
                await asyncio.sleep(0.2)
            if tty:
                print()
            final = await show(final=True)
            tasks = await _incidents(fleet, api, bindings, INCIDENT_TIMEOUT_S)
            report = {
                "finished_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
                "parameters": {"devices": options.devices, "tps": options.tps, "duration_s": options.duration_s},
                "machine": machine(),
                "api": server.base_url,
                "audio_dir": str((run_dir / "audio").resolve()),
                "devices_online": await api.online(),
                "backend": {
                    "sent": backend_stats.sent,
                    "accepted": backend_stats.accepted,
                    "failed": backend_stats.failed,
                    "errors": backend_stats.errors[:10],
                },
                "delivery": final.model_dump(),
                "tasks": tasks,
                "agents": asdict(fleet.stats()),
                "serial_hardware": fleet.serial_report(),
                "bridge": asdict(server.bridge.stats) if server.bridge else None,
                "ingest": asdict(server.ingest.stats) if server.ingest else None,
            }
            _write_report(options.report, report, final)
            if options.stay:
                print(
                    f"  继续运行 still running: payments go on at {options.tps}/s; dashboard {dashboard}; Ctrl-C 停止"
                )
                await backend.run(client, rate_per_s=options.tps, duration_s=STAY_S)
    return report
