"""What every command module of the CLI shares: argument types that refuse bad values with a
clear message, running a command until a signal, and the event loop it runs on."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

from edge_agent.program import RESTART, positive_float, server_key
from haodian.api_client import add_server_arguments
from mqtt_link.tasks import until_signalled

__all__ = ["RESTART", "positive_float", "server_key", "until_signalled"]

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def tcp_port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {value}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def api_command(sub: Any, name: str, *, help: str, description: str, run: Callable[[argparse.Namespace], int]) -> Any:
    """A command that is a client of the fleet API (`--server`, `--token`), run on a thread; its
    actions' subparsers, which set `<name>_command`."""
    command = sub.add_parser(name, help=help, description=description)
    add_server_arguments(command)
    command.set_defaults(run=in_thread(run))
    return command.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def in_thread(run: Callable[[argparse.Namespace], int]) -> Command:
    """A blocking command (an HTTP client of the API) run on a thread, as the async ones run."""

    async def command(args: argparse.Namespace) -> int:
        return await asyncio.to_thread(run, args)

    return command


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def event_loop_factory(command: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the server when it is installed (the server extra brings it): the same code,
    about half the event loop's CPU per request and message. `HAODIAN_EVENT_LOOP=asyncio` turns
    it off; the agent and the tools always run on asyncio's own loop."""
    choice = os.environ.get("HAODIAN_EVENT_LOOP", "auto").strip().lower() or "auto"
    if choice not in EVENT_LOOPS:
        raise SystemExit(f"haodian: HAODIAN_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, not {choice!r}")
    if command != "server" or choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional, server-side only
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "haodian: HAODIAN_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop
