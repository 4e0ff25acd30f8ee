"""The launcher: the bootloader's choice of slot and the init system's watch over the agent.

    haodian agent run --config agent.toml           the launcher (this module) ...
      └─ python -m edge_agent --config agent.toml   ... runs the agent from the chosen slot

At every start the launcher asks the boot control (`ota.slots.BootControl.boot`) which slot runs,
then starts the agent program (`program`) with that slot's code first on the path: the slot's
`app/` folder, unpacked from an agent build (`ota.builds`), or the installed package for the
factory slot that no update has written yet. It watches how the agent ends and tells the boot
control (`ended`), which is how the boot counter tells the software's failures from the
world's:

- exit 75: the agent asked for a restart (remote reboot, update, rollback): start again;
- an error exit, or a signal the program raised itself (SIGSEGV, SIGABRT ...): a **crash**;
  a trial slot that crashes is dropped at the next boot; the working slot is started again
  after a pause that doubles up to a minute (a watchdog's reboot);
- a trial still uncommitted after `ota_trial_deadline_s`: **hung**, stopped and dropped;
- killed from outside (SIGKILL, SIGTERM, SIGHUP, SIGINT: kill -9, an operator): nothing is
  recorded, and the boot control counts that trial boot as interrupted, as it does when the
  power takes the launcher too;
- exit 2 on the working slot (bad configuration, state folder in use): the launcher stops with
  it, since starting again cannot help.

The agent dies with the launcher (`PR_SET_PDEATHSIG`), as the application dies with the board.

On a board with RAUC or SWUpdate this module is the one that changes: the slot choice is the
bootloader's (U-Boot's `BOOT_ORDER`/`BOOT_x_LEFT`, read back with `rauc status`), the watch is
systemd's (`Restart=`, `WatchdogSec=`), and "starting the agent from a slot" is the root file
system the bootloader mounted (docs/architecture.md, "OTA").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable

import structlog

from edge_agent.config import AgentConfig
from edge_agent.ota.builds import APP_DIR
from edge_agent.ota.slots import BootChoice, BootControl
from edge_agent.program import BAD_CONFIG, RESTART

log = structlog.get_logger(__name__)

BOOT_ENV = "HAODIAN_AGENT_BOOT"  # the launcher's choice, for the agent it starts (JSON)
# Signals that come from outside the program: an interruption, not a crash.
_FROM_OUTSIDE = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT})
_PR_SET_PDEATHSIG = 1
RESTART_MAX_S = 60.0
STOP_GRACE_S = 20.0


class Launcher:
    def __init__(self, config: AgentConfig, argv: list[str], *, python: str = sys.executable) -> None:
        """`argv`: the agent program's options (those `haodian agent run` was given)."""
        self.config = config
        self.argv = argv
        self.python = python
        self.control = BootControl(config.state_dir, factory_version=config.firmware, factory_slot=config.slot)
        self.process: asyncio.subprocess.Process | None = None  # the agent running now
        self._log = log.bind(device_id=config.device_id)

    async def run(self) -> int:
        """Start the agent from its slot, again after each end, until the launcher is stopped."""
        pause = 1.0
        while True:
            self.control.reload()
            try:
                choice = self.control.boot()
            except OSError as exc:  # a full or failing flash: the environment cannot be written
                self._log.error("cannot write the boot environment; trying again", error=str(exc), pause_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RESTART_MAX_S)
                continue
            started = time.monotonic()
            code, how = await self._run_once(choice)
            self.control.reload()
            if code == RESTART:
                self.control.ended(how or "restart asked")
                pause = 1.0
                continue
            if code == 0:
                return 0
            if how is None:  # killed from outside: the next boot counts it as interrupted
                self._log.warning("agent killed from outside; starting it again", code=code)
                await asyncio.sleep(1.0)
                continue
            self.control.ended(how)
            if choice.trial:
                self._log.error("trial slot failed; the next boot drops it", slot=choice.slot, how=how)
                continue
            if code == BAD_CONFIG and time.monotonic() - started < 30:
                self._log.error("agent cannot start; not starting it again", how=how)
                return BAD_CONFIG
            self._log.error("agent crashed; starting it again", how=how, pause_s=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX_S)

    async def _run_once(self, choice: BootChoice) -> tuple[int, str | None]:
        """Run the agent once; its exit code and, unless it was killed from outside, how it ended."""
        app = self.control.folder(choice.slot) / APP_DIR
        env = {**os.environ, BOOT_ENV: json.dumps(dataclasses.asdict(choice))}
        if app.is_dir():
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(app), os.environ.get("PYTHONPATH")]))
        self._log.info(
            "starting the agent",
            slot=choice.slot,
            version=choice.version,
            trial=choice.trial,
            code=str(app) if app.is_dir() else "installed package",
        )
        proc = await asyncio.create_subprocess_exec(
            self.python,
            "-P",  # no working folder first on the path: an `edge_agent` there must not shadow the slot's
            "-m",
            "edge_agent",
            *self.argv,
            env=env,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with(os.getpid()),
        )
        self.process = proc
        tail: deque[str] = deque(maxlen=40)
        copier = asyncio.create_task(_copy_stderr(proc, tail))
        hung = False
        try:
            if choice.trial:
                hung = await self._watch_trial(proc, choice)
            code = await proc.wait()
        except asyncio.CancelledError:
            await _stop(proc)
            raise
        finally:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(copier, 5)
        if hung:
            return 1, f"hung: not committed within {self.config.ota_trial_deadline_s:.0f} s"
        if code < 0 and signal.Signals(-code) in _FROM_OUTSIDE:
            return code, None
        if code in (0, RESTART):
            return code, "restart asked" if code == RESTART else "stopped"
        what = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        return code, f"crashed: {what}: {_last_error(tail)}"

    async def _watch_trial(self, proc: asyncio.subprocess.Process, choice: BootChoice) -> bool:
        """Wait until the trial commits, ends, or runs past its deadline (then stop it: True)."""
        deadline = time.monotonic() + self.config.ota_trial_deadline_s
        while proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.5)
            self.control.reload()
            if self.control.active == choice.slot:
                return False  # committed: from now on it is the working slot
            if time.monotonic() > deadline and proc.returncode is None:
                self._log.error("trial boot hung; stopping it", slot=choice.slot)
                proc.kill()
                await proc.wait()
                return True
        return False


def follow_launcher() -> BootChoice | None:
    """In the agent program: the boot the launcher chose (None: started by hand)."""
    text = os.environ.pop(BOOT_ENV, None)
    if text is None:
        return None
    return BootChoice(**json.loads(text))


def _die_with(parent: int) -> Callable[[], None]:
    """Run in the new process before it becomes the agent: it is killed when the launcher dies
    (kept across exec), and ends at once if the launcher is already gone."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

    def arrange() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return arrange


async def _copy_stderr(proc: asyncio.subprocess.Process, tail: deque[str]) -> None:
    """The agent's log lines go on to ours; the last ones say why it crashed."""
    assert proc.stderr is not None  # noqa: S101 - asked for above
    out = sys.stderr.buffer
    while line := await proc.stderr.readline():
        out.write(line)
        out.flush()
        tail.append(line.decode("utf-8", "replace").rstrip())


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _last_error(lines: deque[str]) -> str:
    """The line of the agent's last words that names the error (a traceback's last line)."""
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith(("File ", "^", "~")) and ("Error" in text or "Exception" in text):
            return text[-160:]
    return (lines[-1].strip() if lines else "no output")[-160:]
