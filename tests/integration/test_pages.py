"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright (never a
browser Playwright downloads). One live world for the module: the embedded broker, the fleet
server and bridge on the embedded PostgreSQL, six simulated devices running the real agent in
three stores, payments announced, and one open task in each of two stores.

Each role signs in through the form and walks its page's main path; no page may log a console
error; a field agent cannot open another store's device by URL or by API. Screenshots go to
`test-output/screenshots/` (HAODIAN_TEST_OUTPUT overrides), phone pages at 360 px wide.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.hardware.audio import PLAYED_LOG
from firmware_protocols import topics
from firmware_protocols.ota import ReleaseManifest, sign_manifest
from fleet_server.auth.roles import Role
from fleet_server.inspection.detectors import Finding, FindingKind
from fleet_server.ota.policy import CampaignPolicy, TargetSelector
from haodian.scenarios.demo import merchants_for, registry_csv
from haodian.settings import Settings
from simulators.backend import PaymentBackend
from simulators.fleet import SimulatedFleet
from tests.conftest import _fresh_database
from tests.integration.conftest import eventually, in_process_stack
from tests.integration.test_notifications import HOOK_SECRET, Receiver, free_port, serving

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "Chromium is not installed (apt-get install chromium fonts-wqy-microhei; ./dev test does it as root)",
        allow_module_level=True,
    )
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright  # noqa: E402

PASSWORD = "test-only-password-7f3a"  # noqa: S105 - test accounts, in a database made for this module
OUT = Path(os.environ.get("HAODIAN_TEST_OUTPUT", "test-output")) / "screenshots"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
# Chromium's flags for a closed network (no background connections) and a root user in CI.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def world(embedded_pg_admin, server_keys, backend_key, tmp_path_factory) -> AsyncIterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("pages")
    database = _fresh_database(embedded_pg_admin)
    database_url = next(database)
    settings = Settings(data_dir=base, http_port=0, mqtt_client_prefix=f"pages{int(time.time())}")
    async with AsyncExitStack() as exits:
        broker, server = await exits.enter_async_context(in_process_stack(settings, database_url, server_keys))
        fleet = await exits.enter_async_context(
            SimulatedFleet(
                6,
                broker_url=broker.endpoint.url(),
                server_keys=[server_keys.server_public_key_b64],
                base_dir=base / "fleet",
                prefix="PG",
                health_interval_s=1.0,
            )
        )
        await fleet.wait_connected(30)
        bindings = merchants_for(fleet.device_ids)
        registry = registry_csv(bindings)
        admin_token = await server.auth.service_token("test-runner", Role.OPS_ADMIN)
        http = await exits.enter_async_context(
            httpx.AsyncClient(base_url=server.base_url, headers={"authorization": f"Bearer {admin_token}"}, timeout=30)
        )
        imported = await http.post(
            "/api/v1/registry/import",
            params={"dry_run": "false"},
            content=registry.encode(),
            headers={"content-type": "text/csv"},
        )
        assert imported.json()["invalid"] == 0, imported.text
        by_store = {f"S-{row.split(',')[2]}": row.split(",")[10] for row in registry.splitlines()[1:]}
        ours, theirs = by_store["S-WJ"], by_store["S-HLG"]
        for login, role, fields in (
            ("ops", Role.OPS_ADMIN, {}),
            ("viewer", Role.OPS_VIEWER, {}),
            ("agent-wj", Role.FIELD_AGENT, {"name": "望京经纪人", "stores": ["S-WJ"], "agent_id": "A-WJ"}),
            ("merchant1", Role.MERCHANT, {"name": "商户1", "merchant_id": "M00001"}),
        ):
            await server.auth.create_user(login, role=role, password=PASSWORD, **fields)
        backend = PaymentBackend(backend_key, server.base_url, sorted(set(bindings.values())), seed=7)
        await backend.run(http, rate_per_s=10, duration_s=1.0)

        async def played() -> bool:
            summary = (await http.get("/api/v1/deliveries/summary")).json()
            return summary["deliveries"] > 0 and summary["pending"] == 0

        await eventually(played, what="the payments announced")
        assert server.inspector is not None
        finding = {
            "confidence": 0.9,
            "evidence": {"why": "test"},
            "action_zh": "上门检查喇叭",
            "action_en": "Check the speaker",
        }
        await server.inspector.tasks.record(
            [Finding(ours, FindingKind.FAULTY, **finding), Finding(theirs, FindingKind.FAULTY, **finding)],
            datetime.now(tz=UTC),
        )
        # A poison message from one device, for the quarantine card: NUL inside valid JSON.
        async with aiomqtt.Client(broker.host, broker.port, identifier="pages-poisoner", username="poisoner") as raw:
            poison = {"v": 1, "type": "health", "device_id": ours, "ts": 1, "note": "a\u0000b"}
            await raw.publish(topics.up(ours, topics.Up.HEALTH), json.dumps(poison).encode(), qos=1)

        async def held() -> bool:
            return (await http.get("/api/v1/quarantine/summary")).json()["total"] == 1

        await eventually(held, what="the poison message quarantined")
        # An OTA campaign for the dashboard to show, paused by an operator before its first offer.
        release_key = Ed25519PrivateKey.generate()  # test-only, made for this run
        artifact = b"firmware 0.2.0 for the page tests"
        now_ms = time.time_ns() // 1_000_000
        manifest = ReleaseManifest(
            name="haodian-speaker",
            version="0.2.0",
            models=["HD-S1"],
            size=len(artifact),
            sha256=hashlib.sha256(artifact).hexdigest(),
            issued_at=now_ms,
            expires_at=now_ms + 86_400_000,
        )
        ota = server.ota_store
        await ota.add_release(sign_manifest(manifest, release_key))

        async def chunks() -> AsyncIterator[bytes]:
            yield artifact

        await ota.store_artifact("haodian-speaker", "0.2.0", chunks())
        await ota.create_campaign(
            release_name="haodian-speaker",
            version="0.2.0",
            selector=TargetSelector(),
            policy=CampaignPolicy(),
            campaign_id="pages-1",
        )
        await ota.act("pages-1", "pause")
        playwright = await exits.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        exits.push_async_callback(browser.close)
        OUT.mkdir(parents=True, exist_ok=True)
        yield {
            "server": server,
            "http": http,
            "browser": browser,
            "ours": ours,
            "theirs": theirs,
            "our_task": (await server.inspector.tasks.find(device_id=ours))[0].task_id,
            "merchant_devices": sorted(d for d, m in bindings.items() if m == "M00001"),
            "fleet_args": {"broker_url": broker.endpoint.url(), "server_keys": [server_keys.server_public_key_b64]},
            "backend_key": backend_key,
        }
    next(database, None)


class Session:
    """One signed-in browser context with every console error and page error it saw."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context, self.page = context, page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)


async def sign_in(
    browser: Browser, base_url: str, login: str, *, viewport: dict[str, int], next_page: str = "", **options: Any
) -> Session:
    context = await browser.new_context(viewport=viewport, locale="zh-CN", base_url=base_url, **options)
    page = await context.new_page()
    session = Session(context, page)
    await page.goto(f"/login{'?next=' + next_page if next_page else ''}")
    await page.fill("#login", login)
    await page.fill("#password", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return session


async def test_a_wrong_password_is_refused_on_the_form(world):
    context = await world["browser"].new_context(viewport=PHONE, locale="zh-CN", base_url=world["server"].base_url)
    page = await context.new_page()
    await page.goto("/ops")  # not signed in: back to the form
    await page.wait_for_url("**/login?next=*")
    await page.fill("#login", "ops")
    await page.fill("#password", "wrong password!")
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#login-error:not(:empty)")
    assert await page.text_content("#login-error") == "账号或密码错误"
    await page.screenshot(path=str(OUT / "login-phone.png"))
    await context.close()
    audit = (await world["http"].get("/api/v1/audit", params={"target": "ops"})).json()
    assert any(entry["action"] == "auth.login_failed" for entry in audit)


async def test_ops_admin_walks_the_dashboard(world):
    s = await sign_in(world["browser"], world["server"].base_url, "ops", viewport=DESKTOP, next_page="/ops")
    page = s.page
    assert page.url.endswith("/ops")
    assert await page.locator(".tile").count() == 9
    assert await page.locator("#state-chart canvas").count() == 1  # ECharts drew, from our own server
    await page.wait_for_selector("#trend-chart canvas")
    assert "6" in await page.text_content("#counts")
    # Drill down city → district → store → merchant → device, then the device's timeline.
    for key in ("BJ", "WJ", "S-WJ", "M00003"):
        await page.click(f"#drill tr[data-key='{key}']")
        await page.wait_for_selector(f"#crumbs >> text={key}")
    await page.click(f"#drill tr[data-key='{world['ours']}']")
    await page.wait_for_selector("#device-timeline li")
    assert await page.locator("#alerts li").count() >= 2  # the two open tasks
    # The campaign, paused, and resumed from the page by the ops-admin: audited.
    await page.wait_for_selector("#campaigns tr[data-campaign='pages-1'] >> text=haodian-speaker 0.2.0")
    await page.locator("#campaigns tr[data-campaign='pages-1'] button", has_text="继续").click()

    async def resumed() -> bool:
        audit = (await world["http"].get("/api/v1/audit", params={"target": "pages-1"})).json()
        return [(e["action"], e["login"]) for e in audit] == [("ota.resume", "ops")]

    await eventually(resumed, what="the resume in the audit log")
    # The poison message, held: its device and reason on the quarantine card.
    await page.wait_for_selector(f"#quarantine tr[data-device='{world['ours']}'] >> text=格式无效")
    assert "1" in await page.text_content("#quarantine-total")
    # The storage card: the mode in use, and TimescaleDB's jobs (on a server that has it) or none.
    mode = (await world["http"].get("/api/v1/storage")).json()["mode"]
    await page.wait_for_selector(f"#storage-facts >> text={mode}")
    jobs = "#storage-jobs tr[data-job]" if mode == "timescaledb" else "#storage-jobs >> text=原生分区：没有后台任务"
    await page.wait_for_selector(jobs)
    await page.click("#periods button[data-period='7d']")
    await s.shot("ops-dashboard")
    await page.click("#lang")
    await page.wait_for_selector(".tile >> text=Intact rate")
    assert await page.get_attribute("html", "lang") == "en"
    await s.shot("ops-dashboard-en")
    assert s.errors == []
    await s.context.close()


async def test_ops_admin_stocks_devices_and_allocates_them_to_a_store(world):
    s = await sign_in(world["browser"], world["server"].base_url, "ops", viewport=DESKTOP)
    page = s.page
    await page.wait_for_selector("#stock-counts td")
    # Excel's CSV: a byte order mark; one row with a serial twice, which the dry run names.
    packing = "\ufeffdevice_id,serial,model\nPG-STK1,SN-STK1,HD-S1\nPG-STK2,SN-STK1,HD-S1\n"
    upload = [{"name": "stock.csv", "mimeType": "text/csv", "buffer": packing.encode()}]
    await page.set_input_files("#stock-file", files=upload)
    await page.click("#stock-dry")
    await page.wait_for_selector("#stock-problems li >> text=PG-STK2")
    assert "可入库 1，有误 1" in (await page.text_content("#stock-report") or "")
    assert (await world["http"].get("/api/v1/lifecycle/devices/PG-STK1")).status_code == 404  # nothing written
    await page.click("#stock-apply")
    await page.wait_for_selector("#stock-report >> text=已入库 1")
    await page.fill("#allocate-devices", "PG-STK1")
    await page.fill("#allocate-store", "S-HLG")
    await page.click("#allocate-submit")
    await page.wait_for_selector("#allocate-report >> text=已下发 1 台到 S-HLG")
    allocated = page.locator("#stock-counts tr[data-store='S-HLG'] td[data-stage='allocated']")
    assert [await cell.text_content() for cell in await allocated.all()] == ["1"]
    life = (await world["http"].get("/api/v1/lifecycle/devices/SN-STK1")).json()
    assert (life["stage"], life["store_id"]) == ("allocated", "S-HLG")
    await s.shot("ops-stock")
    assert s.errors == []
    await s.context.close()


async def test_ops_admin_imports_the_registry_and_manages_accounts(world):
    s = await sign_in(world["browser"], world["server"].base_url, "ops", viewport=DESKTOP)
    page = s.page
    # The registry from a file: a dry run names the bad row and writes nothing; apply writes the good one.
    # Two devices for 天通苑店, whose devices no other test counts.
    rows = registry_csv({"PG-NEW1": "M00098", "PG-NEW2": "M00095"}).splitlines()
    header, bad = rows[0].split(","), rows[2].split(",")
    bad[header.index("install_lat")] = "99.5"  # PG-NEW2's latitude out of range
    rows[2] = ",".join(bad)
    await page.set_input_files(
        "#import-file", files=[{"name": "registry.csv", "mimeType": "text/csv", "buffer": "\n".join(rows).encode()}]
    )
    await page.click("#import-dry")
    await page.wait_for_selector("#import-problems li >> text=PG-NEW2")
    assert "有效 1，无效 1" in (await page.text_content("#import-report") or "")
    assert (await world["http"].get("/api/v1/devices/PG-NEW1")).status_code == 404  # nothing written
    await page.click("#import-apply")
    await page.wait_for_selector("#import-report >> text=已写入 1")
    assert (await world["http"].get("/api/v1/devices/PG-NEW1")).status_code == 200
    await page.wait_for_selector("#audit td >> text=registry.import")
    # An account from the page: a field agent for 天通苑店, then disabled; they cannot sign in.
    await page.fill("#acct-login", "agent-tty")
    await page.fill("#acct-name", "天通苑经纪人")
    await page.select_option("#acct-role", "field-agent")
    await page.fill("#acct-password", PASSWORD)
    await page.fill("#acct-stores", "S-TTY")
    await page.fill("#acct-agent", "A-TTY")
    await page.click("#acct-add")
    account = "#accounts tr[data-login='agent-tty']"
    await page.wait_for_selector(f"{account} >> text=S-TTY")
    login = {"login": "agent-tty", "password": PASSWORD, "mode": "token"}
    assert (await world["http"].post("/api/v1/auth/login", json=login)).status_code == 200
    await page.click(f"{account} button.acct-toggle")
    await page.wait_for_selector(f"{account} .acct-state >> text=已停用")
    assert (await world["http"].post("/api/v1/auth/login", json=login)).status_code == 401
    await page.wait_for_selector("#audit td >> text=user.change")
    assert s.errors == []
    await s.context.close()


async def test_ops_reassigns_a_task_and_the_new_agents_webhook_hears_it(world):
    port = free_port()
    receiver = Receiver()
    channel = {
        "name": "回龙观经纪人",
        "kind": "webhook",
        "agent_id": "A-HLG",
        "secret": HOOK_SECRET,
        "url": f"http://127.0.0.1:{port}/hooks/a-hlg",
    }
    made = (await world["http"].post("/api/v1/notify/channels", json=channel)).json()
    async with serving(receiver, port):
        s = await sign_in(world["browser"], world["server"].base_url, "ops", viewport=DESKTOP)
        page = s.page
        row = f"#ops-tasks tr[data-task='{world['our_task']}']"
        await page.wait_for_selector(row)
        await page.select_option(f"{row} select.assign-agent", "A-HLG")
        await page.click(f"{row} button.assign")
        await page.wait_for_selector(f"{row} .task-agent >> text=A-HLG")

        async def heard() -> bool:
            return any(r.body["event"] == "task.assigned" for r in receiver.received)

        await eventually(heard, what="the reassignment at the new agent's webhook")
        await page.wait_for_selector(f"#channels tr[data-channel='{made['channel_id']}']")
        assert s.errors == []
        await s.context.close()
    [told] = receiver.received
    assert told.headers["who"] == "a-hlg"
    assert told.body["notice"]["task_id"] == world["our_task"]
    assert told.body["notice"]["device_id"] == world["ours"]
    audit = (await world["http"].get("/api/v1/audit", params={"login": "ops"})).json()
    assert any(e["action"] == "task.assign" and e["target"] == str(world["our_task"]) for e in audit)


async def test_ops_viewer_sees_the_dashboard_and_changes_nothing(world):
    s = await sign_in(world["browser"], world["server"].base_url, "viewer", viewport=DESKTOP)
    assert s.page.url.endswith("/ops")
    assert await s.page.locator("#campaigns button").count() == 0
    csrf = await s.page.evaluate("HD.me.csrf")
    answer = await s.page.request.post("/api/v1/ota/campaigns/any/pause", headers={"X-CSRF-Token": csrf})
    assert answer.status == 403
    assert (await answer.json())["error"]["code"] == "FORBIDDEN"
    # The cookie alone changes nothing: without the page's CSRF token the request is refused.
    no_csrf = await s.page.request.post("/api/v1/auth/logout")
    assert no_csrf.status == 403
    assert s.errors == []
    await s.context.close()


async def test_field_agent_works_a_task_on_the_phone(world):
    s = await sign_in(world["browser"], world["server"].base_url, "agent-wj", viewport=PHONE)
    page = s.page
    assert page.url.endswith("/agent")
    tasks = page.locator("#tasks li[data-task]")
    assert await tasks.count() == 1  # only the task of their own store
    await s.shot("agent-tasks-phone")
    await tasks.first.click()
    await page.wait_for_selector("#device-state")
    assert world["ours"] in await page.text_content("#device-body")
    # Its clock as the fleet last saw it: the board's own, right (it runs on this machine's).
    assert "准确" in (await page.text_content("#device-clock") or "")
    await page.click("#device-actions button[data-command='diagnose']")
    await page.wait_for_selector("#checks li", timeout=30_000)
    assert await page.text_content("#command-status") == "成功"
    await page.click("#device-actions button[data-command='test_announce']")
    await page.wait_for_selector("#command-result >> text=测试播报", timeout=30_000)
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click("#device-actions button[data-command='reboot']")
    await page.wait_for_selector("#command-status", timeout=30_000)
    assert await page.text_content("#command-status") == "成功"
    # On site: whose it is (the phone masked; the clear one only on a tap, audited), where it
    # was installed (高德 map link at the registered position), notes, the due time.
    site = (await world["http"].get(f"/api/v1/tasks/{world['our_task']}/site")).json()
    assert await page.text_content("#site-merchant") == site["merchant_name"]
    assert "****" in (await page.text_content("#site-phone") or "")
    href = await page.get_attribute("#site-map", "href") or ""
    assert href.startswith("https://uri.amap.com/marker?position=")
    assert f"{site['install_lon']:.6f},{site['install_lat']:.6f}" in href
    assert "截止" in (await page.text_content("#task-due") or "")
    called = (await world["http"].post(f"/api/v1/tasks/{world['our_task']}/call")).json()["phone"]
    assert re.fullmatch(r"138\d{8}", called)
    await page.fill("#note-text", "商户说昨天开始没声音")
    await page.click("#add-note")
    await page.wait_for_selector("#notes >> text=商户说昨天开始没声音")
    await page.click("#start-task")
    await page.wait_for_selector("#task-status >> text=处理中")
    await page.fill("#close-note", "换了喇叭线")
    await page.click("#close-task")
    await page.wait_for_selector("#verifying")  # closes only once the system has verified the device
    await s.shot("agent-device-phone")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing wider than the phone
    assert s.errors == []
    audit = (await world["http"].get("/api/v1/audit", params={"login": "agent-wj"})).json()
    assert {"device.diagnose", "device.test_announce", "device.reboot", "task.start", "task.close"} <= {
        entry["action"] for entry in audit
    }
    await s.context.close()


def said(fleet: SimulatedFleet, device: str) -> list[str]:
    """What the device's speaker said, in order, from its own play log."""
    log = fleet.base_dir / "audio" / device / PLAYED_LOG
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return [line.split(" ", 2)[2] for line in lines]


async def test_field_agent_installs_a_device_and_swaps_a_faulty_one_from_the_phone(world, tmp_path):
    http, server = world["http"], world["server"]
    # Two new speakers, switched on before anyone registered them (as at the factory), real agents.
    async with SimulatedFleet(2, base_dir=tmp_path, prefix="NEW", health_interval_s=1.0, **world["fleet_args"]) as new:
        await new.wait_connected(30)
        first, spare = new.device_ids
        csv = "device_id,serial,model\n" + "".join(f"{d},SN-{d},HD-S1\n" for d in (first, spare))
        stocked = await http.post(
            "/api/v1/lifecycle/stock", params={"dry_run": "false"}, content=csv, headers={"content-type": "text/csv"}
        )
        assert stocked.json()["applied"] == 2, stocked.text
        allocated = await http.post(
            "/api/v1/lifecycle/allocate", json={"device_ids": [first, spare], "store_id": "S-WJ"}
        )
        assert allocated.is_success, allocated.text
        where = {
            "geolocation": {"latitude": 39.9931, "longitude": 116.4742, "accuracy": 12},
            "permissions": ["geolocation"],
        }
        s = await sign_in(world["browser"], server.base_url, "agent-wj", viewport=PHONE, **where)
        page = s.page
        # Install: the serial typed, a merchant of the store picked, confirm.
        await page.fill("#install-serial", f"SN-{first}")
        await page.dispatch_event("#install-serial", "change")
        await page.wait_for_selector("#install-merchant option[value^='M']", state="attached")
        merchant = await page.eval_on_selector("#install-merchant", "s => s.options[0].value")
        assert "已下发" in (await page.text_content("#install-device") or "")
        await page.click("#install-confirm")
        await page.wait_for_selector("#install-steps li.ok", timeout=60_000)
        await s.shot("agent-install-phone")
        spoken = said(new, first)
        assert spoken[:1] == ["设备绑定成功"], spoken
        assert "测试播报，收款成功" in spoken, spoken
        life = (await http.get(f"/api/v1/lifecycle/devices/{first}")).json()
        assert (life["stage"], life["merchant_id"]) == ("in_service", merchant)
        assert (life["install_lat"], life["install_lon"]) == (pytest.approx(39.9931), pytest.approx(116.4742))
        assert (await http.get(f"/api/v1/devices/{first}")).json()["state"] == "in_service"
        # The merchant's settings on it, which the spare must take over.
        changed = await http.put(f"/api/v1/devices/{first}/settings", json={"volume": 3, "repeat": 2})
        assert changed.is_success, changed.text
        # Swap it for the spare, from its card: the spare takes the merchant; the next payment plays there.
        await page.evaluate(f"location.hash = 'device={first}'")
        await page.wait_for_selector("#swap-device:not(.hidden)")
        await page.click("#swap-device")
        await page.fill("#install-serial", f"SN-{spare}")
        await page.dispatch_event("#install-serial", "change")
        await page.wait_for_selector("#install-device >> text=已下发")
        await page.click("#install-confirm")
        await page.wait_for_selector("#install-steps li.ok", timeout=60_000)
        assert said(new, spare)[:1] == ["设备绑定成功"]
        assert (await http.get(f"/api/v1/lifecycle/devices/{first}")).json()["stage"] == "returned"

        async def settings_taken() -> bool:
            view = (await http.get(f"/api/v1/devices/{spare}/settings")).json()
            return (view["volume"], view["repeat"], view["applied"]) == (3, 2, True)

        await eventually(settings_taken, what="the merchant's settings on the new device")
        before = len(said(new, first))
        backend = PaymentBackend(world["backend_key"], server.base_url, [merchant], seed=29)
        await backend.run(http, rate_per_s=2, duration_s=1.0)

        async def heard() -> bool:
            return any("收款" in text and "测试" not in text for text in said(new, spare))

        await eventually(heard, what="the merchant's payment played on the new device")
        assert len(said(new, first)) == before  # the old one is silent: not the merchant's any more
        assert s.errors == []
        await s.context.close()


async def test_field_agent_cannot_open_another_stores_device(world):
    theirs = world["theirs"]
    s = await sign_in(world["browser"], world["server"].base_url, "agent-wj", viewport=PHONE)
    page = s.page
    await page.goto(f"/agent#device={theirs}")  # by URL
    await page.wait_for_selector("#device-error")
    assert await page.text_content("#device-error") == "该设备不在您负责的范围内"
    assert await page.locator("#device-actions").is_hidden()
    await s.shot("agent-not-yours-phone")
    for path in (f"/api/v1/devices/{theirs}", f"/api/v1/devices/{theirs}/timeline"):  # by API, with the session
        assert (await page.request.get(path)).status == 403
    csrf = await page.evaluate("HD.me.csrf")
    command = await page.request.post(
        f"/api/v1/devices/{theirs}/commands", data={"name": "reboot"}, headers={"X-CSRF-Token": csrf}
    )
    assert command.status == 403
    listed = sorted(d["device_id"] for d in await (await page.request.get("/api/v1/devices")).json())
    everything = (await world["http"].get("/api/v1/devices")).json()
    assert listed == sorted(d["device_id"] for d in everything if d["store_id"] == "S-WJ")  # their store's, whatever
    assert world["ours"] in listed  # with the devices other tests installed there
    assert theirs not in listed
    await page.fill("#search", theirs)
    await page.click("#search-form button[type=submit]")
    await page.wait_for_selector("#error >> text=没有找到设备")
    # The only console errors are the browser reporting the refused requests above.
    assert all("403" in error for error in s.errors), s.errors
    audit = (await world["http"].get("/api/v1/audit", params={"target": theirs})).json()
    assert {e["action"] for e in audit} == {"auth.out_of_reach"}
    await s.context.close()


async def test_merchant_changes_settings_and_sees_announcements(world):
    s = await sign_in(world["browser"], world["server"].base_url, "merchant1", viewport=PHONE)
    page = s.page
    assert page.url.endswith("/merchant")
    cards = page.locator("section[data-device]")
    assert sorted(await cards.evaluate_all("cs => cs.map(c => c.dataset.device)")) == world["merchant_devices"]
    device = world["merchant_devices"][0]
    await page.fill(f"#volume-{device}", "3")
    await page.select_option(f"#repeat-{device}", "2")
    await page.check(f"#quiet-on-{device}")
    await page.fill(f"#quiet-start-{device}", "23:00")
    await page.fill(f"#quiet-end-{device}", "06:30")
    await page.click(f"#save-{device}")
    # Saved and signed; then the device's health report says it holds them.
    await page.wait_for_selector(f"#settings-state-{device} >> text=设备已生效", timeout=30_000)
    await page.click(f"#test-{device}")
    await page.wait_for_selector(f"#result-{device} >> text=成功", timeout=30_000)
    assert await page.locator("#announcements li[data-heard='1']").count() >= 1
    await s.shot("merchant-phone")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    assert s.errors == []
    not_mine = await page.request.get(f"/api/v1/devices/{world['ours']}/settings")
    assert not_mine.status == 403
    # What the merchant set is what the device now runs.
    server = world["server"]
    view = await server.remote.settings_of(device)
    assert (view.volume, view.repeat, view.quiet_hours.start, view.quiet_hours.end) == (3, 2, "23:00", "06:30")
    await s.context.close()


async def test_a_device_moved_to_a_merchant_shows_them_none_of_its_old_merchants_payments(world, backend_key):
    """Last in this module: it moves a device. A payment of ¥987.65 to the device's old merchant,
    then the device rebound to merchant1: merchant1's page shows the device, and not that payment."""
    http, server = world["http"], world["server"]
    bindings = (await http.get("/api/v1/bindings")).json()
    moved, old = next((b["device_id"], b["merchant_id"]) for b in bindings if b["merchant_id"] != "M00001")
    body, headers = PaymentBackend(backend_key, server.base_url, [old]).notification(amount_fen=98765)
    paid = (await http.post("/api/v1/notifications/backend", content=body, headers=headers)).json()["payment_id"]

    async def heard() -> bool:
        deliveries = (await http.get(f"/api/v1/payments/{paid}")).json()["deliveries"]
        return any(d["device_id"] == moved and d["status"] == "played" for d in deliveries)

    await eventually(heard, what="the old merchant's payment played on the device")
    assert (await http.post("/api/v1/bindings", json={"device_id": moved, "merchant_id": "M00001"})).is_success
    s = await sign_in(world["browser"], server.base_url, "merchant1", viewport=PHONE)
    page = s.page
    await page.wait_for_selector(f"section[data-device='{moved}']", timeout=30_000)
    await page.wait_for_selector("#announcements li", timeout=30_000)
    assert "987.65" not in await page.locator("#announcements").inner_text()
    assert "987.65" not in await page.locator("#not-announced").inner_text()
    # The ops account sees it, on the same device: the page above did not just miss it.
    everything = (await http.get(f"/api/v1/devices/{moved}/announcements")).json()
    assert paid in {a["payment_id"] for a in everything}
    await s.shot("merchant-moved-device")
    assert s.errors == []
    await s.context.close()
