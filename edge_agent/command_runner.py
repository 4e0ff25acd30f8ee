"""Remote commands as they arrive: checked, answered at once, run in the background, answered
again with the outcome.

A command whose signature the downlink has checked is refused if it has expired or names an
unknown command or bad arguments, answered `duplicate` if its id ran before (the window survives
restarts, so a redelivered reboot does not reboot twice), and otherwise answered `accepted` at
once, run as a task of its own, and answered `succeeded` or `failed`. What each command does is
the table in `commands`; what it acts on is a `CommandHost`, here `AgentCommandHost` over the
agent's parts.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import structlog

from edge_agent import commands, diagnose, logbook
from edge_agent.announcer import Announcer
from edge_agent.boot import Restart
from edge_agent.clock import Clock
from edge_agent.config import LiveConfig
from edge_agent.dedup import SeenIds
from edge_agent.errors import AgentError, CommandFailed
from edge_agent.merchant_settings import MerchantSettings
from edge_agent.reporter import HealthReporter
from edge_agent.stats import AgentStats
from edge_agent.uplink import Uplink
from firmware_protocols import topics
from firmware_protocols.messages import Command, CommandResult, CommandStatus
from mqtt_link.link import Delivery
from mqtt_link.tasks import Component, cancel_and_wait

log = structlog.get_logger(__name__)


class CommandRunner(Component):
    def __init__(
        self,
        device_id: str,
        *,
        host: commands.CommandHost,
        uplink: Uplink,
        seen: SeenIds,
        clock: Clock,
        stats: AgentStats,
        restart: Restart,
    ) -> None:
        self.device_id = device_id
        self._host = host
        self._uplink = uplink
        self._seen = seen
        self._clock = clock
        self._stats = stats
        self._restart = restart
        self._running: set[asyncio.Task[None]] = set()
        self._log = log.bind(device_id=device_id)

    async def _start(self, stack: AsyncExitStack) -> None:
        stack.callback(self._seen.close)
        stack.push_async_callback(self._cancel_running)

    async def _cancel_running(self) -> None:
        for task in list(self._running):
            await cancel_and_wait(task)

    async def take(self, command: Command, _delivery: Delivery) -> None:
        """Check one signed command, answer at once, and run it in the background."""
        received_at = self._clock.now_ms()
        self._stats.commands += 1
        command_log = self._log.bind(command_id=command.command_id, command=command.name)
        try:
            if received_at > command.expires_at():
                raise ValueError(f"expired {(received_at - command.expires_at()) // 1000} s ago")
            action, args = commands.prepare(command.name, command.args)
        except ValueError as exc:
            self._stats.refused += 1
            await self._refused(command, str(exc))
            return
        if not self._seen.remember(command.command_id, received_at):
            command_log.info("command already handled; not run again")
            await self._answer(command, CommandStatus.DUPLICATE)
            return
        command_log.info("command accepted")
        await self._answer(command, CommandStatus.ACCEPTED)
        task = asyncio.create_task(self._run(command, action, args), name=f"command:{command.command_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def refuse(self, command: Command, reason: str) -> None:
        """A command that failed its signature check: answered refused with the reason."""
        self._stats.commands += 1
        await self._refused(command, reason)

    async def _refused(self, command: Command, reason: str) -> None:
        self._log.warning("command refused", command_id=command.command_id, command=command.name, reason=reason)
        await self._answer(command, CommandStatus.REFUSED, reason=reason)

    async def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Wait until every command taken has answered its outcome."""
        async with asyncio.timeout(timeout_s):
            while self._running:
                await asyncio.wait(set(self._running))

    async def _run(self, command: Command, action: commands.Action, args: Any) -> None:
        try:
            result = await action(self._host, args, command.issued_at)
        except (AgentError, OSError) as exc:
            self._log.warning("command failed", command_id=command.command_id, command=command.name, error=str(exc))
            await self._answer(command, CommandStatus.FAILED, reason=str(exc))
            return
        await self._answer(command, CommandStatus.SUCCEEDED, result=result)
        if self._restart.pending:
            self._restart.requested.set()

    async def _answer(
        self,
        command: Command,
        status: CommandStatus,
        *,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        message = CommandResult(
            device_id=self.device_id,
            ts=self._clock.now_ms(),
            command_id=command.command_id,
            name=command.name[:128],
            status=status,
            reason=reason[:128] if reason else None,
            result=result or {},
        )
        await self._uplink.send(topics.Up.RESULT, message)


@dataclass(frozen=True, slots=True)
class AgentCommandHost:
    """What commands act on (`commands.CommandHost`): the running agent's parts."""

    device_id: str
    restart: Restart
    settings: MerchantSettings
    announcer: Announcer
    reporter: HealthReporter
    config: LiveConfig

    async def request_reboot(self) -> None:
        if not self.restart.ask("command"):
            raise CommandFailed("the agent is not running")

    async def set_volume(self, volume: int, version_ms: int) -> None:
        self.settings.set_volume(volume, version_ms)

    async def test_announce(self) -> dict[str, Any]:
        return await self.announcer.say_test()

    async def run_diagnose(self) -> list[diagnose.Check]:
        return await self.reporter.run_diagnose()

    def recent_log(self, lines: int) -> list[str]:
        return logbook.recent(self.device_id, lines)

    async def set_config(self, key: str, value: Any) -> None:
        await self.config.set(key, value)
