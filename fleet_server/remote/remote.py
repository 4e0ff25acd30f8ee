"""Acting on devices from the pages: remote commands with their results, and the merchant's
settings.

    async with DeviceRemote(pool, endpoint, signer, client_id=...) as remote:
        view = await remote.command("SPK1", "diagnose", {}, issued_by="agent7", wait_s=15)

A command is recorded, signed and sent on `down/command`; the device answers on `up/result`
(accepted at once, then succeeded / failed / refused). Results are stored as they arrive, so
any server process can answer for a command another one sent (with shared subscriptions the
result may reach a sibling); a waiter wakes on its own process's result or finds it by polling.

Settings are signed and published retained on `down/settings` with a version (epoch ms): a
device that is off takes the latest when it connects, and its health reports say which version
it holds, so the page can tell "saved" from "on the device".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import Command, CommandResult, DailySpan, Settings
from firmware_protocols.signing import Signer
from fleet_server.db import failures
from fleet_server.db.fetch import execute, fetch_dicts, fetch_model, fetch_models, fetch_row
from fleet_server.db.hierarchy import WHOLE_FLEET, Reach, reach_params
from fleet_server.devices.queries import DEVICE_KNOWN
from fleet_server.errors import RemoteError
from fleet_server.identity.reports import ReportAuthority
from fleet_server.quarantine.store import Quarantine
from fleet_server.remote import queries
from mqtt_link.errors import LinkDown
from mqtt_link.routing import Inbound, Router, consumer_link
from mqtt_link.tasks import Component

log = structlog.get_logger(__name__)

# A result that could not be stored (database away) is tried again after this long.
STORE_RETRY_S = 1.0

# A command is only worth running soon after it was asked for: a reboot an hour late surprises
# the merchant. The page shows "no answer" after the wait and the device refuses it after this.
COMMAND_TTL_S: Final = 120
_POLL_S: Final = 0.5


class CommandView(BaseModel):
    command_id: str
    device_id: str
    name: str
    args: dict[str, Any]
    issued_by: str
    issued_at: datetime
    status: str  # sent, or the device's latest answer
    reason: str | None
    result: dict[str, Any]
    updated_at: datetime

    @property
    def final(self) -> bool:
        return self.status in queries.FINAL_STATUSES


class SettingsChange(BaseModel):
    volume: int | None = None
    repeat: int | None = None
    quiet_hours: DailySpan | None = None
    clear_quiet_hours: bool = False


class SettingsView(BaseModel):
    device_id: str
    version: int | None  # None: never set from here; the device runs its defaults
    volume: int
    repeat: int
    quiet_hours: DailySpan | None
    updated_by: str | None
    updated_at: datetime | None
    device_version: int | None  # the version the device last reported holding
    applied: bool


async def _wait_out(exc: Exception) -> None:
    log.warning("command result not stored; retrying", error=failures.describe(exc), retry_in_s=STORE_RETRY_S)
    await asyncio.sleep(STORE_RETRY_S)


class DeviceRemote(Component):
    def __init__(
        self,
        pool: AsyncConnectionPool,
        endpoint: BrokerEndpoint,
        signer: Signer,
        *,
        client_id: str,
        share_group: str | None = None,
        quarantine: Quarantine | None = None,
        authority: ReportAuthority | None = None,
    ) -> None:
        """`authority`: checks each result's signature (None: every result is believed)."""
        self._pool = pool
        self._signer = signer
        self._waiters: dict[str, asyncio.Event] = {}
        self.quarantine = quarantine or Quarantine(pool)
        self.results_in = Router(
            "remote",
            topics.Direction.UP,
            on_reject=self.quarantine.hook("remote"),
            verify=authority.verify if authority is not None else None,
        )
        self.results_in.route(topics.Up.RESULT, CommandResult, self._on_result)
        # A result is acknowledged to the broker once stored (or quarantined): a server killed in
        # between has the broker send it again.
        self._link = consumer_link(
            self.results_in, endpoint, client_id=client_id, share_group=share_group, manual_ack=True
        )

    async def _start(self, stack: AsyncExitStack) -> None:
        await stack.enter_async_context(self._link)

    async def wait_connected(self, timeout_s: float) -> None:
        await self._link.wait_connected(timeout_s)

    # -- commands ---------------------------------------------------------------------------

    async def command(
        self, device_id: str, name: str, args: dict[str, Any], *, issued_by: str, wait_s: float
    ) -> CommandView:
        """Send a command and wait up to `wait_s` for its final result; the view as it stands then."""
        now_ms = _now_ms()
        command_id = f"c-{now_ms}-{secrets.token_hex(4)}"
        issued_at = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
        row = {"id": command_id, "d": device_id, "name": name, "args": json.dumps(args), "by": issued_by}
        if not await execute(self._pool, queries.INSERT_COMMAND, row | {"at": issued_at, "status": queries.SENT}):
            # Nothing would ever answer: say so now rather than hold the caller for wait_s
            # (found by the OpenAPI fuzzing, issue 10).
            raise RemoteError(
                "DEVICE_NOT_FOUND", f"device {device_id} is not known to the fleet", f"设备 {device_id} 不存在"
            )
        message = self._signer.sign(
            Command(
                device_id=device_id,
                ts=now_ms,
                key_id=self._signer.key_id,
                issued_at=now_ms,
                ttl_s=COMMAND_TTL_S,
                command_id=command_id,
                name=name,
                args=args,
            )
        )
        done = self._waiters[command_id] = asyncio.Event()
        try:
            try:
                await self._link.publish(topics.down(device_id, topics.Down.COMMAND), message.to_json())
            except LinkDown as exc:
                await self._set_status(command_id, queries.UNSENT, str(exc), {})
                raise RemoteError(
                    "BROKER_DOWN", f"the command could not be sent: {exc}", "指令未能发出：服务器与设备通道断开"
                ) from exc
            log.info("command sent", device_id=device_id, command=name, command_id=command_id, by=issued_by)
            deadline = asyncio.get_running_loop().time() + wait_s
            while True:
                view = await self.get_command(command_id)
                remaining = deadline - asyncio.get_running_loop().time()
                if view.final or remaining <= 0:
                    return view
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), min(_POLL_S, remaining))
                done.clear()
        finally:
            self._waiters.pop(command_id, None)

    async def find_command(
        self, command_id: str, *, device_id: str | None = None, reach: Reach = WHOLE_FLEET
    ) -> CommandView | None:
        """One command; `device_id`: only if it was sent to that device, `reach`: only if it was
        sent in a period the reach covers."""
        params = {"id": command_id, "d": device_id, **reach_params(reach)}
        return await fetch_model(self._pool, CommandView, queries.COMMAND, params)

    async def get_command(self, command_id: str) -> CommandView:
        view = await self.find_command(command_id)
        if view is None:
            raise RemoteError("COMMAND_NOT_FOUND", f"command {command_id} not found", f"指令 {command_id} 不存在")
        return view

    async def recent_commands(
        self, device_id: str, *, limit: int = 20, reach: Reach = WHOLE_FLEET
    ) -> list[CommandView]:
        """The device's latest commands sent in a period `reach` covers."""
        params = {"d": device_id, "limit": limit, **reach_params(reach)}
        return await fetch_models(self._pool, CommandView, queries.RECENT_COMMANDS, params)

    async def _on_result(self, inbound: Inbound[CommandResult]) -> None:
        result = inbound.message

        async def store(_: Sequence[Inbound[CommandResult]]) -> None:
            await self._set_status(
                result.command_id, result.status.value, result.reason, result.result, device_id=result.device_id
            )

        # An outage is waited out here (the broker holds the rest); a result the database can
        # never take is quarantined, not retried.
        held = await self.quarantine.store_apart(
            "remote", [inbound], store, delivery_of=lambda i: i.delivery, on_transient=_wait_out
        )
        if inbound.delivery.receipt is not None:
            inbound.delivery.receipt.ack()
        if held:
            return
        waiter = self._waiters.get(result.command_id)
        if waiter is not None:
            waiter.set()

    async def _set_status(
        self, command_id: str, status: str, reason: str | None, result: dict[str, Any], *, device_id: str | None = None
    ) -> None:
        await execute(
            self._pool,
            queries.SET_STATUS,
            {
                "status": status,
                "reason": reason,
                "result": json.dumps(result, ensure_ascii=False),
                "id": command_id,
                "device": device_id,
            },
        )

    # -- settings ---------------------------------------------------------------------------

    async def settings_of(self, device_id: str, *, reach: Reach = WHOLE_FLEET) -> SettingsView:
        """The device's settings in force; who saved them only if `reach` covers when."""
        [row] = await fetch_dicts(self._pool, queries.SETTINGS_OF, {"d": device_id, **reach_params(reach)})
        stored = Settings.model_validate(row["settings"]) if row["settings"] else None
        device_version = row["device_version"]
        return SettingsView(
            device_id=device_id,
            version=row["version"],
            volume=stored.volume if stored else (row["device_volume"] if row["device_volume"] is not None else 7),
            repeat=stored.repeat if stored else 1,
            quiet_hours=stored.quiet_hours if stored else None,
            updated_by=row["updated_by"],
            updated_at=row["updated_at"],
            device_version=device_version,
            applied=stored is None or (device_version is not None and device_version >= stored.version),
        )

    async def change_settings(
        self, device_id: str, change: SettingsChange, *, updated_by: str, reach: Reach = WHOLE_FLEET
    ) -> SettingsView:
        """Merge `change` into the device's settings, sign and publish them retained, and keep them."""
        if await fetch_row(self._pool, DEVICE_KNOWN, (device_id,)) is None:
            raise RemoteError(
                "DEVICE_NOT_FOUND", f"device {device_id} is not known to the fleet", f"设备 {device_id} 不存在"
            )
        current = await self.settings_of(device_id)
        now_ms = _now_ms()
        quiet = None if change.clear_quiet_hours else (change.quiet_hours or current.quiet_hours)
        settings = self._signer.sign(
            Settings(
                device_id=device_id,
                ts=now_ms,
                key_id=self._signer.key_id,
                version=max(now_ms, (current.version or 0) + 1),
                volume=change.volume if change.volume is not None else current.volume,
                repeat=change.repeat if change.repeat is not None else current.repeat,
                quiet_hours=quiet,
            )
        )
        try:
            await self._link.publish(topics.down(device_id, topics.Down.SETTINGS), settings.to_json(), retain=True)
        except LinkDown as exc:
            raise RemoteError(
                "BROKER_DOWN", f"the settings could not be sent: {exc}", "设置未能发出：服务器与设备通道断开"
            ) from exc
        await execute(
            self._pool, queries.SAVE_SETTINGS, (settings.version, settings.model_dump_json(), updated_by, device_id)
        )
        log.info("settings sent", device_id=device_id, version=settings.version, by=updated_by)
        return await self.settings_of(device_id, reach=reach)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
