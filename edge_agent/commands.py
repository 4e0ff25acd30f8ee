"""Remote commands: what each one takes, what it does on the device, what it answers.

A command arrives signed on `down/command`. The agent answers on `up/result`: `refused` with a
reason (unknown name, bad arguments, unsigned, expired), `duplicate` for a command id it has
run before, or `accepted` at once and then `succeeded` / `failed` with the outcome. The table
below is the whole command set; the agent supplies the actions (`CommandHost`).

    reboot                            restart the agent (a process restart here; a reboot on a board)
    set_volume {volume: 0-10}         the merchant's volume, kept across restarts
    test_announce                     say 测试播报，收款成功 and report when playback started
    diagnose                          the field agent's checklist (see `diagnose`)
    fetch_log {lines: 1-200}          the agent's recent log lines
    set_config {key, value}           change a runtime setting: health_interval_s, print_receipts
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.diagnose import Check, summary
from firmware_protocols.messages import describe_errors

# A result must fit in one message (16 KiB); log lines are cut to leave room for the rest.
MAX_LOG_BYTES = 12 * 1024


class CommandHost(Protocol):
    """What commands act on: the running agent."""

    async def request_reboot(self) -> None: ...

    async def set_volume(self, volume: int, version_ms: int) -> None: ...

    async def test_announce(self) -> dict[str, Any]: ...

    async def run_diagnose(self) -> list[Check]: ...

    def recent_log(self, lines: int) -> list[str]: ...

    async def set_config(self, key: str, value: Any) -> None: ...


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SetVolumeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume: Annotated[int, Field(ge=0, le=10, strict=True)]


class FetchLogArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lines: Annotated[int, Field(ge=1, le=200, strict=True)] = 100


class SetConfigArgs(BaseModel):
    """The runtime settings a command may change; the rest need a new configuration file."""

    model_config = ConfigDict(extra="forbid")
    key: Literal["health_interval_s", "print_receipts"]
    value: Any


Action = Callable[[CommandHost, Any, int], Awaitable[dict[str, Any]]]


async def _reboot(host: CommandHost, _args: _NoArgs, _issued_at: int) -> dict[str, Any]:
    await host.request_reboot()
    return {"rebooting": True}


async def _set_volume(host: CommandHost, args: SetVolumeArgs, issued_at: int) -> dict[str, Any]:
    await host.set_volume(args.volume, issued_at)
    return {"volume": args.volume}


async def _test_announce(host: CommandHost, _args: _NoArgs, _issued_at: int) -> dict[str, Any]:
    return await host.test_announce()


async def _diagnose(host: CommandHost, _args: _NoArgs, _issued_at: int) -> dict[str, Any]:
    return summary(await host.run_diagnose())


async def _fetch_log(host: CommandHost, args: FetchLogArgs, _issued_at: int) -> dict[str, Any]:
    lines = host.recent_log(args.lines)
    kept: list[str] = []
    size = 0
    for line in reversed(lines):  # newest first, so a cut drops the oldest
        size += len(line.encode()) + 4
        if size > MAX_LOG_BYTES:
            break
        kept.append(line)
    kept.reverse()
    return {"lines": kept, "cut": len(lines) - len(kept)}


async def _set_config(host: CommandHost, args: SetConfigArgs, _issued_at: int) -> dict[str, Any]:
    await host.set_config(args.key, args.value)
    return {args.key: args.value}


COMMANDS: dict[str, tuple[type[BaseModel], Action]] = {
    "reboot": (_NoArgs, _reboot),
    "set_volume": (SetVolumeArgs, _set_volume),
    "test_announce": (_NoArgs, _test_announce),
    "diagnose": (_NoArgs, _diagnose),
    "fetch_log": (FetchLogArgs, _fetch_log),
    "set_config": (SetConfigArgs, _set_config),
}


def prepare(name: str, args: dict[str, Any]) -> tuple[Action, BaseModel]:
    """The action for `name` and its validated arguments; `ValueError` saying what is wrong."""
    entry = COMMANDS.get(name)
    if entry is None:
        raise ValueError(f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
    model, action = entry
    try:
        return action, model.model_validate(args)
    except ValidationError as exc:
        raise ValueError(f"bad arguments for {name}: {describe_errors(exc.errors())}") from exc
