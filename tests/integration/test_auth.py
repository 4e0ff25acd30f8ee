"""Sign-in, roles and reach, enforced in the API (not only in the pages), and the audit log;
over the real server on the embedded broker and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from fleet_server.auth.roles import Role
from fleet_server.auth.store import TOKEN_PREFIX
from fleet_server.errors import AuthError
from haodian.scenarios.demo import merchants_for, registry_csv
from haodian.settings import Settings
from tests.integration.conftest import api_client, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PASSWORD = "test-only-password-1b2c"  # noqa: S105 - a test account in a database made for the test
ANOTHER_PASSWORD = "test-only-password-9z8y"  # noqa: S105 - the same
SHORT_PASSWORD = "short"  # noqa: S105 - refused for its length

# Devices of the registry below: M00003 is in store S-WJ, M00001 in S-HLG (haodian.scenarios.demo's layout).
DEVICES = [f"AU{i}" for i in range(1, 6)]


@pytest.fixture
async def server(tmp_path, embedded_database, server_keys, unique):
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"t{unique}")
    async with in_process_stack(settings, embedded_database, server_keys) as (_, server):
        async with await api_client(server) as admin:
            answer = await admin.post(
                "/api/v1/registry/import",
                params={"dry_run": "false"},
                content=registry_csv(merchants_for(DEVICES)).encode(),
                headers={"content-type": "text/csv"},
            )
            assert answer.json()["invalid"] == 0
        yield server


def _device_of(merchant: str) -> str:
    return next(d for d, m in merchants_for(DEVICES).items() if m == merchant)


async def test_nothing_without_signing_in_and_a_wrong_password_says_the_same_as_an_unknown_login(server):
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        for path in ("/api/v1/devices", "/api/v1/fleet/summary", "/api/v1/tasks", "/api/v1/ota/campaigns", "/metrics"):
            answer = await anonymous.get(path)
            assert answer.status_code == 401, path
            assert answer.json()["error"]["message_zh"] == "请先登录"
        bogus = await anonymous.get("/api/v1/devices", headers={"authorization": "Bearer not-a-token"})
        assert bogus.json()["error"]["code"] == "SESSION_ENDED"
        await server.auth.create_user("ops", role=Role.OPS_ADMIN, password=PASSWORD)
        wrong = await anonymous.post("/api/v1/auth/login", json={"login": "ops", "password": "nope-nope-nope"})
        unknown = await anonymous.post("/api/v1/auth/login", json={"login": "nobody", "password": "nope-nope-nope"})
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        token = await anonymous.post("/api/v1/auth/login", json={"login": "ops", "password": PASSWORD, "mode": "token"})
        assert token.status_code == 200
        assert "set-cookie" not in token.headers  # a token asked for, no cookie
        me = await anonymous.get("/api/v1/auth/me", headers={"authorization": f"Bearer {token.json()['token']}"})
        assert me.json()["role"] == "ops-admin"
    audit = await server.auth.audit_log()  # newest first
    assert [(e.action, e.target, e.outcome) for e in audit[:3]] == [
        ("auth.login", "ops", "ok"),
        ("auth.login_failed", "nobody", "denied"),
        ("auth.login_failed", "ops", "denied"),
    ]


async def test_a_session_cookie_needs_the_csrf_token_to_change_anything_and_ends_on_logout(server):
    await server.auth.create_user("ops", role=Role.OPS_ADMIN, password=PASSWORD)
    async with httpx.AsyncClient(base_url=server.base_url) as browser:
        signed = await browser.post("/api/v1/auth/login", json={"login": "ops", "password": PASSWORD})
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert signed.json()["token"] is None  # the page never sees the session token
        csrf = signed.json()["me"]["csrf"]
        assert (await browser.get("/api/v1/devices")).status_code == 200
        task = "/api/v1/tasks/1/assign"
        refused = await browser.post(task, json={"agent_id": "A1"})
        assert refused.json()["error"]["code"] == "CSRF_TOKEN"
        assert (await browser.post(task, json={"agent_id": "A1"}, headers={"X-CSRF-Token": csrf})).status_code == 404
        assert (await browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})).status_code == 204
        assert (await browser.get("/api/v1/devices")).status_code == 401


@pytest.mark.parametrize(
    ("role", "allowed", "refused"),
    [
        (
            Role.OPS_VIEWER,
            ["/api/v1/fleet/summary", "/api/v1/ota/campaigns", "/api/v1/payments/not-announced"],
            ["/api/v1/audit", "/api/v1/users"],
        ),
        (Role.BACKEND, ["/api/v1/bindings", "/api/v1/deliveries/summary"], ["/api/v1/fleet/summary", "/api/v1/tasks"]),
        (
            Role.MERCHANT,
            ["/api/v1/devices"],
            ["/api/v1/fleet/summary", "/api/v1/tasks", "/api/v1/bindings", "/metrics"],
        ),
        (Role.FIELD_AGENT, ["/api/v1/devices", "/api/v1/tasks"], ["/api/v1/fleet/summary", "/api/v1/ota/campaigns"]),
    ],
)
async def test_each_role_reads_what_it_may_and_nothing_else(server, role, allowed, refused):
    fields = {Role.MERCHANT: {"merchant_id": "M00001"}, Role.FIELD_AGENT: {"stores": ["S-WJ"]}}.get(role, {})
    async with await api_client(server, role, **fields) as client:
        for path in allowed:
            assert (await client.get(path)).status_code == 200, path
        for path in refused:
            answer = await client.get(path)
            assert answer.status_code == 403, path
            assert answer.json()["error"]["message_zh"] == "您的账号没有此操作的权限"


async def test_a_viewer_changes_nothing_and_the_refusal_is_audited(server):
    async with await api_client(server, Role.OPS_VIEWER) as viewer:
        for method, path, body in (
            ("POST", "/api/v1/tasks/1/assign", {"agent_id": "A"}),
            ("POST", "/api/v1/registry/import", None),
            ("POST", "/api/v1/ota/campaigns/x/pause", None),
            ("PUT", f"/api/v1/devices/{DEVICES[0]}/settings", {"volume": 1}),
            ("POST", f"/api/v1/devices/{DEVICES[0]}/commands", {"name": "reboot"}),
            ("POST", "/api/v1/users", {"login": "x", "role": "ops-admin"}),
        ):
            answer = await viewer.request(method, path, json=body)
            assert answer.status_code == 403, path
    denied = [e for e in await server.auth.audit_log() if e.action == "auth.denied"]
    assert len(denied) == 6


async def test_a_field_agent_reaches_only_the_devices_and_tasks_of_their_stores(server):
    ours, theirs = _device_of("M00003"), _device_of("M00001")
    async with await api_client(server, Role.FIELD_AGENT, stores=["S-WJ"]) as agent:
        assert [d["device_id"] for d in (await agent.get("/api/v1/devices")).json()] == [ours]
        assert (await agent.get(f"/api/v1/devices/{ours}")).status_code == 200
        for path in (f"/api/v1/devices/{theirs}", f"/api/v1/devices/{theirs}/timeline", "/api/v1/devices/NO-SUCH"):
            answer = await agent.get(path)
            assert answer.status_code == 403, path  # an unknown id is refused alike: no probing for ids
            assert answer.json()["error"]["code"] == "OUT_OF_REACH"
        # A search by another store's serial finds nothing.
        assert (await agent.get("/api/v1/devices", params={"q": f"HD{theirs}"})).json() == []
        # Only diagnostics, a test announcement and a reboot; never another store's device.
        refused = await agent.post(f"/api/v1/devices/{ours}/commands", json={"name": "set_config", "args": {}})
        assert refused.json()["error"]["code"] == "COMMAND_NOT_ALLOWED"
        assert (await agent.post(f"/api/v1/devices/{theirs}/commands", json={"name": "reboot"})).status_code == 403
        assert (await agent.put(f"/api/v1/devices/{ours}/settings", json={"volume": 1})).status_code == 403


async def test_a_merchant_reaches_only_their_own_devices_and_payments(server):
    mine = sorted(d for d, m in merchants_for(DEVICES).items() if m == "M00001")
    async with await api_client(server, Role.MERCHANT, merchant_id="M00001") as merchant:
        assert sorted(d["device_id"] for d in (await merchant.get("/api/v1/devices")).json()) == mine
        assert (await merchant.get(f"/api/v1/devices/{_device_of('M00003')}/announcements")).status_code == 403
        # Asking for another merchant's payments answers with their own.
        answer = await merchant.get("/api/v1/payments/not-announced", params={"merchant_id": "M00003"})
        assert all(row["merchant_id"] == "M00001" for row in answer.json())
        changed = await merchant.put(
            f"/api/v1/devices/{mine[0]}/settings",
            json={"volume": 4, "quiet_hours": {"start": "22:00", "end": "07:00"}},
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["volume"], changed.json()["applied"]) == (4, False)  # no device to hold them here
        bad = await merchant.put(f"/api/v1/devices/{mine[0]}/settings", json={"volume": 11})
        assert bad.status_code == 422
    [entry] = [e for e in await server.auth.audit_log(target=mine[0]) if e.action == "device.settings"]
    assert entry.detail["volume"] == 4


async def test_accounts_disabled_or_with_a_new_password_lose_their_sessions(server):
    await server.auth.create_user("agent7", role=Role.FIELD_AGENT, password=PASSWORD, stores=["S-WJ"])
    session = await server.auth.login("agent7", PASSWORD)
    assert await server.auth.resolve(session.token) is not None
    await server.auth.update_user("agent7", password=ANOTHER_PASSWORD)
    assert await server.auth.resolve(session.token) is None
    token = await server.auth.issue("agent7")
    await server.auth.update_user("agent7", disabled=True)
    assert await server.auth.resolve(token.token) is None
    with pytest.raises(AuthError, match="wrong login or password"):
        await server.auth.login("agent7", ANOTHER_PASSWORD)
    with pytest.raises(AuthError, match="at least 10"):
        await server.auth.create_user("short", role=Role.OPS_VIEWER, password=SHORT_PASSWORD)
    with pytest.raises(AuthError, match="names its stores"):
        await server.auth.create_user("nostore", role=Role.FIELD_AGENT, password=PASSWORD)


async def test_an_expired_token_signs_nobody_in(server):
    await server.auth.create_user("bot", role=Role.OPS_VIEWER)
    stale = await server.auth.issue("bot", ttl=timedelta(seconds=-1))
    assert stale.expires_at < datetime.now(tz=UTC)
    assert await server.auth.resolve(stale.token) is None
    with pytest.raises(AuthError, match="wrong login or password"):
        await server.auth.login("bot", "")  # a service account has no password to guess


async def test_tokens_are_marked_and_never_read_as_a_command_line_option(server):
    tokens = [await server.auth.service_token(f"tok-{i}", Role.OPS_VIEWER) for i in range(3)]
    issued = await server.auth.issue("tok-0", kind="api")
    for token in [*tokens, issued.token]:
        assert token.startswith(TOKEN_PREFIX)
