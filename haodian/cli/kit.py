"""What every command module of the CLI shares: argument types that refuse bad values with a
clear message, running a command until a signal, and the event loop it runs on."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from haodian.api_client import add_server_arguments

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

# `haodian agent run` returns this when the agent asked for its own restart (a remote reboot);
# `main` then replaces the process with a fresh one, as a board's reboot would.
RESTART = 75


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
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


def server_key(text: str) -> str:
    """A base64 Ed25519 public key, or @FILE holding one."""
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read server key file {text[1:]}: {exc}") from exc
    return text


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


async def until_signalled(command: Coroutine[Any, Any, int]) -> int:
    """Run `command`; SIGTERM (and Ctrl-C) cancel it, so every resource shuts down in order."""
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - always inside asyncio.run.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await command
    except asyncio.CancelledError:
        return 0


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
