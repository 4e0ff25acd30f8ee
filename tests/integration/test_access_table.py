"""Every operation of both OpenAPI documents (the fleet server's and the bridge's), called as
every role and with five bad tokens, against the decisions beside the roles
(`fleet_server/auth/decisions.py`), on the real server (embedded broker and PostgreSQL).

The world: stores S-A and S-B, merchant MA in S-A with device DA1, merchant MB in S-B with DB1,
and DM1, which was MB's (a payment, a command, settings and a task in B's period) and then moved
to MA. The field agent's store is S-A, the merchant account is MA's. For an operation a role may
use on its own only (OWN), its own target must answer, another's (and, on the moved device, B's
period) must be a 403 OUT_OF_REACH, and a list must leave the other's records out while the
whole fleet's accounts see them.

Each operation is its own test, named by the operation; a route with no decision, or a decision
with no request here, fails `test_every_operation_has_a_decision_and_a_request`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_protocols.ota import ReleaseManifest, sign_manifest
from firmware_protocols.signing import encode_public_key
from fleet_server.auth.decisions import COLUMNS, DECISIONS, Decision
from fleet_server.auth.roles import Role
from haodian.server import Part, ServerStack, build_app
from haodian.settings import Settings
from payment_bridge.keyring import PUBLIC_KEY_ID_PREFIX
from simulators.backend import PaymentBackend
from simulators.registry import register
from tests.conftest import _fresh_database
from tests.integration.conftest import in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PASSWORD = "test-only-password-7q6w"  # noqa: S105 - a test account in a database made for the test
FIELDS: dict[Role, dict[str, Any]] = {
    Role.FIELD_AGENT: {"stores": ["S-A"], "agent_id": "A-A"},
    Role.MERCHANT: {"merchant_id": "MA"},
}
BAD_TOKENS = ("none", "garbage", "expired", "revoked", "disabled account")


def _operations() -> set[str]:
    """ "METHOD /path" of every operation in both OpenAPI documents."""
    found: set[str] = set()
    for parts in ({Part.FLEET}, {Part.BRIDGE}):
        for path, operations in build_app(parts).openapi()["paths"].items():
            found |= {f"{method.upper()} {path}" for method in operations}
    return found


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    server: ServerStack
    http: httpx.AsyncClient
    admin: dict[str, str]
    release_key: Ed25519PrivateKey
    backend: Callable[[str], PaymentBackend]
    ids: dict[str, str] = field(default_factory=dict)
    bad: dict[str, dict[str, str]] = field(default_factory=dict)
    serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self.serial)}"

    async def token(self, role: Role) -> dict[str, str]:
        """A new token of the role's account (a new one per call: a logout ends only its own)."""
        login = f"table-{role.value}"
        token = await self.server.auth.service_token(login, role, **FIELDS.get(role, {}))
        return {"authorization": f"Bearer {token}"}

    async def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        async with self.server.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall() if cursor.description else []

    async def ok(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        answer = await self.http.request(method, path, headers=(headers or {}) | self.admin, **kwargs)
        assert answer.is_success, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json() if answer.content else None

    async def pay(self, merchant: str) -> str:
        body, headers = self.backend(merchant).notification()
        return str(
            (await self.ok("POST", "/api/v1/notifications/backend", content=body, headers=headers))["payment_id"]
        )

    async def task(self, device: str, store: str) -> str:
        [(task_id,)] = await self.sql(
            "INSERT INTO tasks (device_id, kind, store_id, confidence, evidence, action_zh, action_en, opened_at,"
            " updated_at) VALUES (%s, %s, %s, 0.9, '{}', '检查设备', 'check the device', now(), now())"
            " RETURNING task_id",
            (device, self.fresh("kind-"), store),
        )
        return str(task_id)

    async def command(self, device: str) -> str:
        body = {"name": "diagnose", "wait_s": 0}
        return str((await self.ok("POST", f"/api/v1/devices/{device}/commands", json=body))["command_id"])

    async def release(self) -> ReleaseManifest:
        """A new release, signed with the server's trusted release key; its artifact not yet uploaded."""
        artifact = self.fresh("firmware-").encode()
        now_ms = int(datetime.now(tz=UTC).timestamp() * 1000)
        manifest = ReleaseManifest(
            name="haodian-speaker",
            version=f"9.{next(self.serial)}.0",
            models=["HD-S1"],
            size=len(artifact),
            sha256=sha256(artifact).hexdigest(),
            issued_at=now_ms,
            expires_at=now_ms + 86_400_000,
        )
        self.ids[f"artifact:{manifest.version}"] = artifact.decode()
        return sign_manifest(manifest, self.release_key)

    async def uploaded_release(self) -> ReleaseManifest:
        manifest = await self.release()
        await self.ok("POST", "/api/v1/ota/releases", json=manifest.model_dump(mode="json"))
        artifact = self.ids[f"artifact:{manifest.version}"].encode()
        path = f"/api/v1/ota/releases/{manifest.name}/{manifest.version}/artifact"
        await self.ok("PUT", path, content=artifact, headers={"content-type": "application/octet-stream"})
        return manifest


Make = Callable[[World], Awaitable[Call]]
Foreign = Callable[[World], Awaitable[list[Call]]]
# Whether a list answer leaves out every record of another's reach (or of B's period).
Hides = Callable[[World, Any], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Case:
    ok: int  # the status when the role may
    own: Make  # the request on the caller's own target (made afresh for each call)
    foreign: Foreign | None = None  # OWN, one record: targets out of reach
    hides: Hides | None = None  # OWN, a list: leaves out what is out of reach
    code: str | None = None  # the error code when `ok` is a refusal by the operation itself


def call(method: str, path: str, **kwargs: Any) -> Make:
    async def make(world: World) -> Call:
        return Call(method, path.format(**world.ids), **kwargs)

    return make


def calls(method: str, *paths: str, **kwargs: Any) -> Foreign:
    async def make(world: World) -> list[Call]:
        return [Call(method, path.format(**world.ids), **kwargs) for path in paths]

    return make


async def _hides_db1(_: World, answer: Any) -> bool:
    return "DB1" not in {d["device_id"] for d in answer}


async def _timeline_hides_b_period(world: World, answer: Any) -> bool:
    details = [e["detail"] for e in answer["entries"]]
    payments = {d.get("payment_id") for d in details}
    tasks = {str(d.get("task_id")) for d in details}
    return world.ids["pay_before"] not in payments and world.ids["task_dm_before"] not in tasks


async def _announcements_hide_b_period(world: World, answer: Any) -> bool:
    return world.ids["pay_before"] not in {a["payment_id"] for a in answer}


async def _commands_hide_b_period(world: World, answer: Any) -> bool:
    return world.ids["cmd_before"] not in {c["command_id"] for c in answer}


async def _settings_hide_who_saved_them_in_b_period(_: World, answer: Any) -> bool:
    return answer["updated_by"] is None and answer["volume"] == 3  # in force on the device, whoever saved them


async def _tasks_hide_s_b(world: World, answer: Any) -> bool:
    shown = {str(t["task_id"]) for t in answer}
    return not shown & {world.ids["task_b"], world.ids["task_dm_before"]} and {t["store_id"] for t in answer} == {"S-A"}


async def _not_announced_hides_others(world: World, answer: Any) -> bool:
    return {p["merchant_id"] for p in answer} <= {"MA"} and world.ids["pay_lonely"] not in {
        p["payment_id"] for p in answer
    }


async def _summary_is_ma_s(world: World, answer: Any) -> bool:
    [(payments,)] = await world.sql("SELECT count(*) FROM payments WHERE merchant_id = 'MA' AND kind = 'payment'")
    return bool(answer["payments"] == payments)


async def _fresh_user(world: World) -> str:
    login = world.fresh("someone-")
    await world.server.auth.create_user(login, role=Role.OPS_VIEWER)
    return login


async def _login(world: World) -> Call:
    login = await _fresh_user(world)
    await world.server.auth.create_user(f"{login}-pw", role=Role.OPS_VIEWER, password=PASSWORD)
    return Call("POST", "/api/v1/auth/login", json={"login": f"{login}-pw", "password": PASSWORD, "mode": "token"})


async def _new_user(world: World) -> Call:
    return Call("POST", "/api/v1/users", json={"login": world.fresh("new-"), "role": "ops-viewer"})


async def _patch_user(world: World) -> Call:
    return Call("PATCH", f"/api/v1/users/{await _fresh_user(world)}", json={"disabled": True})


async def _user_token(world: World) -> Call:
    return Call("POST", f"/api/v1/users/{await _fresh_user(world)}/tokens", json={"days": 1})


def _task_action(action: str, body: dict[str, Any] | None = None) -> tuple[Make, Foreign]:
    async def own(world: World) -> Call:
        return Call("POST", f"/api/v1/tasks/{await world.task('DA1', 'S-A')}/{action}", json=body)

    async def foreign(world: World) -> list[Call]:
        return [Call("POST", f"/api/v1/tasks/{await world.task(d, 'S-B')}/{action}", json=body) for d in ("DB1", "DM1")]

    return own, foreign


async def _import(_: World) -> Call:
    csv = REGISTRY.format(at=datetime.now(tz=UTC).isoformat(timespec="seconds")).encode()
    return Call("POST", "/api/v1/registry/import", params={"dry_run": "true"}, content=csv, headers=_CSV)


_CSV = {"content-type": "text/csv"}


async def _provision(world: World) -> Call:
    return Call("POST", f"/api/v1/registry/devices/{world.fresh('NEW')}/credentials")


async def _revoke(world: World) -> Call:
    device = world.fresh("REV")
    await world.server.credentials.provision(device, by="table")  # type: ignore[union-attr]
    return Call("POST", f"/api/v1/registry/devices/{device}/credentials/revoke")


_CHANNEL = {"name": "table", "kind": "wecom", "url": "https://qyapi.example/cgi-bin/webhook/send?key=K"}


async def _channel(world: World) -> int:
    made = await world.ok("POST", "/api/v1/notify/channels", json=_CHANNEL)
    return int(made["channel_id"])


async def _delete_channel(world: World) -> Call:
    return Call("DELETE", f"/api/v1/notify/channels/{await _channel(world)}")


async def _test_channel(world: World) -> Call:
    return Call("POST", f"/api/v1/notify/channels/{await _channel(world)}/test")


async def _retire(world: World) -> Call:
    device = world.fresh("RET")
    await world.sql("INSERT INTO devices (device_id, state) VALUES (%s, 'offline')", (device,))
    return Call("POST", f"/api/v1/registry/devices/{device}/retire", json={"reason": "lost", "note": "table"})


async def _add_release(world: World) -> Call:
    return Call("POST", "/api/v1/ota/releases", json=(await world.release()).model_dump(mode="json"))


async def _upload(world: World) -> Call:
    manifest = await world.release()
    await world.ok("POST", "/api/v1/ota/releases", json=manifest.model_dump(mode="json"))
    artifact = world.ids[f"artifact:{manifest.version}"].encode()
    path = f"/api/v1/ota/releases/{manifest.name}/{manifest.version}/artifact"
    return Call("PUT", path, content=artifact, headers={"content-type": "application/octet-stream"})


async def _new_campaign(world: World) -> Call:
    manifest = await world.uploaded_release()
    body = {"release_name": manifest.name, "version": str(manifest.version), "target": {"devices": ["DA1"]}}
    return Call("POST", "/api/v1/ota/campaigns", json=body)


async def _campaign_action(world: World) -> Call:
    made = await world.ok("POST", "/api/v1/ota/campaigns", json=(await _new_campaign(world)).json)
    return Call("POST", f"/api/v1/ota/campaigns/{made['campaign_id']}/pause")


async def _artifact(world: World) -> Call:
    manifest = await world.uploaded_release()
    return Call("GET", f"/ota/artifacts/{manifest.sha256}")


async def _notification(world: World) -> Call:
    body, headers = world.backend("MC").notification()  # MC has no device: no announcement is due
    return Call("POST", "/api/v1/notifications/backend", content=body, headers=headers)


async def _bind(world: World) -> Call:
    device = world.fresh("BIND")
    await register(world.server.pool, devices=[device], merchants=["MX"])
    return Call("POST", "/api/v1/bindings", json={"device_id": device, "merchant_id": "MX"})


async def _unbind(world: World) -> Call:
    device = world.fresh("UNB")
    await register(world.server.pool, devices=[device], merchants=["MX"])
    await world.ok("POST", "/api/v1/bindings", json={"device_id": device, "merchant_id": "MX"})
    return Call("DELETE", f"/api/v1/bindings/{device}")


def _moved_device(what: str, hides: Hides) -> Case:
    """A device's records, read on the moved device DM1 (which must hide B's period) and on B's DB1."""
    return Case(200, call("GET", f"/api/v1/devices/DM1/{what}"), calls("GET", f"/api/v1/devices/DB1/{what}"), hides)


_start, _start_foreign = _task_action("start")
_close, _close_foreign = _task_action("close", {"note": "换了电源"})
_cancel, _cancel_foreign = _task_action("cancel", {"reason": "false_alarm", "note": "商户在用"})
_note, _note_foreign = _task_action("notes", {"text": "到店，商户不在"})
_call, _call_foreign = _task_action("call")


async def _site(world: World) -> Call:
    return Call("GET", f"/api/v1/tasks/{await world.task('DA1', 'S-A')}/site")


async def _site_foreign(world: World) -> list[Call]:
    return [Call("GET", f"/api/v1/tasks/{await world.task(d, 'S-B')}/site") for d in ("DB1", "DM1")]


async def _stocked(world: World, store: str | None = None) -> str:
    """A new device in stock, allocated to `store` when one is given."""
    device = world.fresh("LC")
    csv = f"device_id,serial,model\n{device},SN{device},HD-S1\n".encode()
    await world.ok("POST", "/api/v1/lifecycle/stock", params={"dry_run": "false"}, content=csv, headers=_CSV)
    if store is not None:
        await world.ok("POST", "/api/v1/lifecycle/allocate", json={"device_ids": [device], "store_id": store})
    return device


async def _installed(world: World, store: str) -> str:
    device = await _stocked(world, store)
    merchant = {"S-A": "MA", "S-B": "MB"}[store]
    await world.ok("POST", f"/api/v1/lifecycle/devices/{device}/install", json={"merchant_id": merchant})
    return device


async def _tested(world: World, store: str) -> tuple[str, str]:
    """An installed device whose test announcement played (as its result would record it)."""
    device, command = await _installed(world, store), world.fresh("cmd-")
    await world.sql(
        "INSERT INTO device_commands (command_id, device_id, name, issued_by, issued_at, status, updated_at)"
        " VALUES (%s, %s, 'test_announce', 'table', now(), 'succeeded', now())",
        (command, device),
    )
    return device, command


def _lifecycle(make: Callable[[World, str], Awaitable[Call]]) -> tuple[Make, Foreign]:
    """A lifecycle request on a device of S-A (own), and on one of S-B (another's)."""

    async def own(world: World) -> Call:
        return await make(world, "S-A")

    async def foreign(world: World) -> list[Call]:
        return [await make(world, "S-B")]

    return own, foreign


async def _life_read(world: World, store: str) -> Call:
    return Call("GET", f"/api/v1/lifecycle/devices/{await _stocked(world, store)}")


async def _life_history(world: World, store: str) -> Call:
    return Call("GET", f"/api/v1/lifecycle/devices/{await _stocked(world, store)}/history")


async def _install(world: World, store: str) -> Call:
    device, merchant = await _stocked(world, store), {"S-A": "MA", "S-B": "MB"}[store]
    return Call("POST", f"/api/v1/lifecycle/devices/{device}/install", json={"merchant_id": merchant, "lat": 39.9})


async def _commission(world: World, store: str) -> Call:
    device, command = await _tested(world, store)
    return Call("POST", f"/api/v1/lifecycle/devices/{device}/commission", json={"command_id": command})


async def _give_back(world: World, store: str) -> Call:
    return Call("POST", f"/api/v1/lifecycle/devices/{await _installed(world, store)}/return", json={"note": "关店"})


async def _swap(world: World, store: str) -> Call:
    old, new = await _installed(world, store), await _stocked(world, store)
    return Call("POST", f"/api/v1/lifecycle/devices/{old}/swap", json={"new_device": f"SN{new}"})


async def _scrap(world: World) -> Call:
    return Call("POST", f"/api/v1/lifecycle/devices/{await _stocked(world)}/scrap", json={"note": "进水"})


async def _allocate(world: World) -> Call:
    return Call("POST", "/api/v1/lifecycle/allocate", json={"device_ids": [await _stocked(world)], "store_id": "S-A"})


async def _merchants_hide_s_b(_: World, answer: Any) -> bool:
    return {m["store_id"] for m in answer} == {"S-A"}


_life_own, _life_foreign = _lifecycle(_life_read)
_history_own, _history_foreign = _lifecycle(_life_history)
_install_own, _install_foreign = _lifecycle(_install)
_commission_own, _commission_foreign = _lifecycle(_commission)
_return_own, _return_foreign = _lifecycle(_give_back)
_swap_own, _swap_foreign = _lifecycle(_swap)
_STOCK_CSV = b"device_id,serial,model\nLC-DRY,SN-DRY,HD-S1\n"

CASES: dict[str, Case] = {
    "POST /api/v1/auth/login": Case(200, _login),
    "POST /api/v1/auth/logout": Case(204, call("POST", "/api/v1/auth/logout")),
    "GET /api/v1/auth/me": Case(200, call("GET", "/api/v1/auth/me")),
    "GET /api/v1/users": Case(200, call("GET", "/api/v1/users")),
    "POST /api/v1/users": Case(201, _new_user),
    "PATCH /api/v1/users/{login}": Case(200, _patch_user),
    "POST /api/v1/users/{login}/tokens": Case(201, _user_token),
    "GET /api/v1/audit": Case(200, call("GET", "/api/v1/audit")),
    "GET /api/v1/devices": Case(200, call("GET", "/api/v1/devices"), hides=_hides_db1),
    "GET /api/v1/devices/{device_id}": Case(
        200, call("GET", "/api/v1/devices/DA1"), foreign=calls("GET", "/api/v1/devices/DB1", "/api/v1/devices/NOPE")
    ),
    "GET /api/v1/devices/{device_id}/timeline": _moved_device("timeline", _timeline_hides_b_period),
    "GET /api/v1/devices/{device_id}/announcements": _moved_device("announcements", _announcements_hide_b_period),
    "POST /api/v1/devices/{device_id}/commands": Case(
        202,
        call("POST", "/api/v1/devices/DA1/commands", json={"name": "test_announce", "wait_s": 0}),
        foreign=calls("POST", "/api/v1/devices/DB1/commands", json={"name": "test_announce", "wait_s": 0}),
    ),
    "GET /api/v1/devices/{device_id}/commands": _moved_device("commands", _commands_hide_b_period),
    "GET /api/v1/devices/{device_id}/commands/{command_id}": Case(
        200,
        call("GET", "/api/v1/devices/DA1/commands/{cmd_a}"),
        foreign=calls("GET", "/api/v1/devices/DB1/commands/{cmd_b}", "/api/v1/devices/DM1/commands/{cmd_before}"),
    ),
    "GET /api/v1/devices/{device_id}/settings": _moved_device("settings", _settings_hide_who_saved_them_in_b_period),
    "PUT /api/v1/devices/{device_id}/settings": Case(
        200,
        call("PUT", "/api/v1/devices/DA1/settings", json={"repeat": 2}),
        foreign=calls("PUT", "/api/v1/devices/DB1/settings", json={"repeat": 2}),
    ),
    "GET /api/v1/figures": Case(200, call("GET", "/api/v1/figures")),
    "GET /api/v1/figures.csv": Case(200, call("GET", "/api/v1/figures.csv")),
    "GET /api/v1/figures/trend": Case(200, call("GET", "/api/v1/figures/trend")),
    "POST /api/v1/figures/recompute": Case(200, call("POST", "/api/v1/figures/recompute")),
    "GET /api/v1/fleet/summary": Case(200, call("GET", "/api/v1/fleet/summary")),
    "GET /api/v1/alerts": Case(200, call("GET", "/api/v1/alerts")),
    "GET /metrics": Case(200, call("GET", "/metrics")),
    "GET /api/v1/tasks": Case(200, call("GET", "/api/v1/tasks"), hides=_tasks_hide_s_b),
    "GET /api/v1/tasks/{task_id}": Case(
        200,
        call("GET", "/api/v1/tasks/{task_a}"),
        foreign=calls("GET", "/api/v1/tasks/{task_b}", "/api/v1/tasks/{task_dm_before}", "/api/v1/tasks/999999"),
    ),
    "POST /api/v1/tasks/{task_id}/assign": Case(
        200, call("POST", "/api/v1/tasks/{task_a}/assign", json={"agent_id": "A-A"})
    ),
    "POST /api/v1/tasks/{task_id}/start": Case(200, _start, foreign=_start_foreign),
    "POST /api/v1/tasks/{task_id}/close": Case(200, _close, foreign=_close_foreign),
    "POST /api/v1/tasks/{task_id}/cancel": Case(200, _cancel, foreign=_cancel_foreign),
    "GET /api/v1/tasks/{task_id}/site": Case(200, _site, foreign=_site_foreign),
    "POST /api/v1/tasks/{task_id}/notes": Case(201, _note, foreign=_note_foreign),
    "POST /api/v1/tasks/{task_id}/call": Case(404, _call, foreign=_call_foreign, code="NO_PHONE"),
    "POST /api/v1/registry/import": Case(200, _import),
    "GET /api/v1/registry/merchants": Case(
        200, call("GET", "/api/v1/registry/merchants", params={"merchant_id": "MA"})
    ),
    "POST /api/v1/registry/devices/{device_id}/credentials": Case(200, _provision),
    "GET /api/v1/registry/devices/{device_id}/credentials": Case(
        200, call("GET", "/api/v1/registry/devices/DA1/credentials")
    ),
    "POST /api/v1/registry/devices/{device_id}/credentials/revoke": Case(200, _revoke),
    "POST /api/v1/registry/devices/{device_id}/retire": Case(200, _retire),
    "GET /api/v1/ota/releases": Case(200, call("GET", "/api/v1/ota/releases")),
    "POST /api/v1/ota/releases": Case(201, _add_release),
    "PUT /api/v1/ota/releases/{name}/{version}/artifact": Case(200, _upload),
    "GET /api/v1/ota/campaigns": Case(200, call("GET", "/api/v1/ota/campaigns")),
    "POST /api/v1/ota/campaigns": Case(201, _new_campaign),
    "GET /api/v1/ota/campaigns/{campaign_id}": Case(200, call("GET", "/api/v1/ota/campaigns/{campaign}")),
    "POST /api/v1/ota/campaigns/{campaign_id}/{action}": Case(200, _campaign_action),
    "GET /ota/artifacts/{sha256}": Case(200, _artifact),
    "GET /api/v1/lifecycle/devices/{key}": Case(200, _life_own, foreign=_life_foreign),
    "GET /api/v1/lifecycle/devices/{device_id}/history": Case(200, _history_own, foreign=_history_foreign),
    "GET /api/v1/lifecycle/counts": Case(200, call("GET", "/api/v1/lifecycle/counts")),
    "GET /api/v1/lifecycle/merchants": Case(200, call("GET", "/api/v1/lifecycle/merchants"), hides=_merchants_hide_s_b),
    "POST /api/v1/lifecycle/stock": Case(
        200, call("POST", "/api/v1/lifecycle/stock", content=_STOCK_CSV, headers=_CSV)
    ),
    "POST /api/v1/lifecycle/allocate": Case(200, _allocate),
    "POST /api/v1/lifecycle/devices/{key}/install": Case(200, _install_own, foreign=_install_foreign),
    "POST /api/v1/lifecycle/devices/{device_id}/commission": Case(200, _commission_own, foreign=_commission_foreign),
    "POST /api/v1/lifecycle/devices/{device_id}/return": Case(200, _return_own, foreign=_return_foreign),
    "POST /api/v1/lifecycle/devices/{device_id}/swap": Case(200, _swap_own, foreign=_swap_foreign),
    "POST /api/v1/lifecycle/devices/{device_id}/{action}": Case(200, _scrap),
    "GET /api/v1/quarantine/summary": Case(200, call("GET", "/api/v1/quarantine/summary")),
    "GET /api/v1/storage": Case(200, call("GET", "/api/v1/storage")),
    "GET /api/v1/notify/channels": Case(200, call("GET", "/api/v1/notify/channels")),
    "GET /api/v1/registry/agents": Case(200, call("GET", "/api/v1/registry/agents")),
    "POST /api/v1/notify/channels": Case(201, call("POST", "/api/v1/notify/channels", json=_CHANNEL)),
    "DELETE /api/v1/notify/channels/{channel_id}": Case(204, _delete_channel),
    "POST /api/v1/notify/channels/{channel_id}/test": Case(202, _test_channel),
    "GET /api/v1/quarantine": Case(200, call("GET", "/api/v1/quarantine")),
    "GET /api/v1/quarantine/{held_id}": Case(404, call("GET", "/api/v1/quarantine/999999"), code="NOT_FOUND"),
    "DELETE /api/v1/quarantine": Case(200, call("DELETE", "/api/v1/quarantine", params={"device_id": "NOPE"})),
    "POST /api/v1/notifications/backend": Case(200, _notification),
    # Unsigned: refused by the platform's signature check, never by a sign-in.
    "POST /api/v1/notifications/alipay": Case(401, call("POST", "/api/v1/notifications/alipay", content=b"a=b")),
    "POST /api/v1/notifications/wechatpay": Case(401, call("POST", "/api/v1/notifications/wechatpay", json={})),
    "POST /api/v1/notifications/unionpay": Case(401, call("POST", "/api/v1/notifications/unionpay", content=b"a=b")),
    "GET /api/v1/payments/not-announced": Case(
        200,
        call("GET", "/api/v1/payments/not-announced", params={"merchant_id": "MC"}),
        hides=_not_announced_hides_others,
    ),
    "GET /api/v1/payments/{payment_id}": Case(
        200,
        call("GET", "/api/v1/payments/{pay_a}"),
        foreign=calls("GET", "/api/v1/payments/{pay_b}", "/api/v1/payments/{pay_before}", "/api/v1/payments/NOPE"),
    ),
    "GET /api/v1/deliveries/summary": Case(200, call("GET", "/api/v1/deliveries/summary"), hides=_summary_is_ma_s),
    "POST /api/v1/bindings": Case(200, _bind),
    "GET /api/v1/bindings": Case(200, call("GET", "/api/v1/bindings", params={"merchant_id": "MA"})),
    "DELETE /api/v1/bindings/{device_id}": Case(204, _unbind),
    "GET /healthz": Case(200, call("GET", "/healthz")),
    "GET /api/v1/time": Case(200, call("GET", "/api/v1/time", params={"device_id": "DA1", "nonce": "n" * 16})),
}


# -- the world -------------------------------------------------------------------------------

REGISTRY = (
    "city_id,city_name,district_id,district_name,store_id,store_name,agent_id,agent_name,merchant_id,"
    "merchant_name,device_id,serial,model,installed_at,install_lat,install_lon\n"
    "BJ,北京,DA,望京,S-A,望京店,A-A,望京经纪人,MA,商户A,DA1,HDDA1,HD-S1,{at},39.99,116.47\n"
    "BJ,北京,DB,国贸,S-B,国贸店,A-B,国贸经纪人,MB,商户B,DB1,HDDB1,HD-S1,{at},39.91,116.46\n"
    "BJ,北京,DB,国贸,S-B,国贸店,A-B,国贸经纪人,MB,商户B,DM1,HDDM1,HD-S1,{at},39.91,116.46\n"
)


@pytest.fixture(scope="module")
def table_database(embedded_pg_admin) -> Iterator[str]:
    yield from _fresh_database(embedded_pg_admin)


@pytest.fixture(scope="module")
async def world(tmp_path_factory, table_database, server_keys, backend_key) -> AsyncIterator[World]:
    release_key = Ed25519PrivateKey.generate()
    folder = tmp_path_factory.mktemp("table")
    # Both platforms configured, so their routes answer by their signature checks.
    (folder / "wechatpay").mkdir()
    (folder / "alipay.pem").write_bytes(_public_pem())
    (folder / "wechatpay" / f"{PUBLIC_KEY_ID_PREFIX}0111200000000000000000000000000009.pem").write_bytes(_public_pem())
    (folder / "apiv3.key").write_bytes(b"test-only-apiv3-key-0123456789ab")
    settings = Settings(
        data_dir=folder,
        alipay_public_key_file=folder / "alipay.pem",
        wechatpay_keys_dir=folder / "wechatpay",
        wechatpay_apiv3_key_file=folder / "apiv3.key",
        http_port=0,
        mqtt_client_prefix="table",
        login_attempts_per_min=10_000,
        notifications_per_s=10_000,
        ota_release_keys=[encode_public_key(release_key.public_key())],
    )
    async with in_process_stack(settings, table_database, server_keys) as (_, server):
        admin = {"authorization": f"Bearer {await server.auth.service_token('table-setup', Role.OPS_ADMIN)}"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:

            def backend(merchant: str) -> PaymentBackend:
                return PaymentBackend(backend_key, server.base_url, [merchant])

            world = World(server, http, admin, release_key, backend)
            await _build(world)
            yield world


async def _build(world: World) -> None:
    at = (datetime.now(tz=UTC) - timedelta(days=1)).isoformat(timespec="seconds")
    report = await world.ok(
        "POST", "/api/v1/registry/import", params={"dry_run": "false"}, content=REGISTRY.format(at=at), headers=_CSV
    )
    assert report["invalid"] == 0, report
    ids = world.ids
    # B's period on DM1: a payment, a command, settings saved by merchant B, a task in store S-B.
    ids["pay_before"] = await world.pay("MB")
    ids["cmd_before"] = await world.command("DM1")
    merchant_b = await world.server.auth.service_token("table-merchant-b", Role.MERCHANT, merchant_id="MB")
    saved = await world.http.put(
        "/api/v1/devices/DM1/settings", json={"volume": 3}, headers={"authorization": f"Bearer {merchant_b}"}
    )
    assert saved.status_code == 200, saved.text
    ids["task_dm_before"] = await world.task("DM1", "S-B")
    # DM1 moves to MA; then A's period and B's elsewhere.
    await world.ok("POST", "/api/v1/bindings", json={"device_id": "DM1", "merchant_id": "MA"})
    ids["pay_a"] = await world.pay("MA")
    ids["pay_b"] = await world.pay("MB")
    ids["pay_lonely"] = await world.pay("MC")  # no device: not announced
    ids["cmd_a"] = await world.command("DA1")
    ids["cmd_b"] = await world.command("DB1")
    ids["task_a"] = await world.task("DA1", "S-A")
    ids["task_b"] = await world.task("DB1", "S-B")
    manifest = await world.uploaded_release()
    campaign = await world.ok(
        "POST",
        "/api/v1/ota/campaigns",
        json={"release_name": manifest.name, "version": str(manifest.version), "target": {"devices": ["DA1"]}},
    )
    ids["campaign"] = campaign["campaign_id"]
    await world.server.credentials.provision("DA1", by="table")  # type: ignore[union-attr]
    # The bad tokens.
    auth = world.server.auth
    await auth.create_user("table-bad", role=Role.OPS_ADMIN)
    expired = await auth.issue("table-bad", ttl=timedelta(seconds=-1))
    revoked = await auth.issue("table-bad")
    assert (await world.http.post("/api/v1/auth/logout", headers=_bearer(revoked.token))).status_code == 204
    await auth.create_user("table-disabled", role=Role.OPS_ADMIN)
    disabled = await auth.issue("table-disabled")
    await world.ok("PATCH", "/api/v1/users/table-disabled", json={"disabled": True})
    world.bad = {
        "none": {},
        "garbage": _bearer("hd_this-is-no-token"),
        "expired": _bearer(expired.token),
        "revoked": _bearer(revoked.token),
        "disabled account": _bearer(disabled.token),
    }


def _public_pem() -> bytes:
    """A platform public key standing in for Alipay's or WeChat Pay's (test-only, made now)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _send(world: World, request: Call, auth: dict[str, str]) -> httpx.Response:
    return await world.http.request(
        request.method,
        request.path,
        params=request.params,
        json=request.json,
        content=request.content,
        headers=request.headers | auth,
    )


def _error(answer: httpx.Response) -> str | None:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(answer.json()["error"]["code"])
    return None


# -- the tests -------------------------------------------------------------------------------


def test_every_operation_has_a_decision_and_a_request() -> None:
    operations = _operations()
    assert sorted(operations - DECISIONS.keys()) == [], "operations with no decision in fleet_server/auth/decisions.py"
    assert sorted(DECISIONS.keys() - operations) == [], "decisions for operations that no longer exist"
    assert sorted(operations - CASES.keys()) == [], "operations with no request in this test"
    for operation, row in DECISIONS.items():
        assert set(row) == set(COLUMNS), operation
        if Decision.OWN in row.values():
            case = CASES[operation]
            assert case.foreign is not None or case.hides is not None, f"{operation}: OWN with nothing to check"


@pytest.mark.parametrize("operation", sorted(DECISIONS))
async def test_each_role_gets_what_the_table_decides(world: World, operation: str) -> None:
    case = CASES[operation]
    row = DECISIONS[operation]
    seen: list[str] = []

    async def expect(request: Call, auth: dict[str, str], status: int, code: str | None, who: str) -> httpx.Response:
        answer = await _send(world, request, auth)
        seen.append(f"{who}→{answer.status_code}")
        assert answer.status_code == status, f"{operation} as {who}: {answer.status_code} {answer.text[:300]}"
        if code is not None:
            assert _error(answer) == code, f"{operation} as {who}: {answer.text[:300]}"
        return answer

    if set(row.values()) == {Decision.PUBLIC}:
        await expect(await case.own(world), {}, case.ok, case.code, "nobody")
        await expect(await case.own(world), world.bad["garbage"], case.ok, case.code, "a bad token")
        return
    for bad, auth in world.bad.items():
        refused = await expect(await case.own(world), auth, 401, None, bad)
        assert _error(refused) in ("NOT_SIGNED_IN", "SESSION_ENDED"), refused.text
    for role, decided in row.items():
        auth = await world.token(role)
        if decided is Decision.NO:
            await expect(await case.own(world), auth, 403, "FORBIDDEN", role.value)
            continue
        answer = await expect(await case.own(world), auth, case.ok, case.code, role.value)
        if case.hides is not None and answer.content:
            hidden = await case.hides(world, answer.json())
            # The whole fleet's accounts see what the others may not: the check is not idle.
            assert hidden == (decided is Decision.OWN), f"{operation} as {role.value}: {answer.text[:500]}"
        if decided is Decision.OWN and case.foreign is not None:
            for request in await case.foreign(world):
                await expect(request, await world.token(role), 403, "OUT_OF_REACH", f"{role.value} on {request.path}")
    print(f"{operation}: {' '.join(seen)}")  # noqa: T201 - names each operation covered (pytest -s)
