"""Two firmware slots and the boot control that chooses between them, as a bootloader would.

On a board the slots are two root partitions and the choice is the bootloader's (U-Boot's
`BOOT_ORDER`/`BOOT_x_LEFT` environment as RAUC uses it, or GRUB's `boot_once` with a counter);
here the slots are folders and `bootctl.json` is the bootloader environment. The rules are the
same, and they are what keeps a device from ending without a working slot:

- the **active** slot is the one known to work; it is never written to while it is active;
- an update is written into the other slot; a slot half written (power cut) is never booted;
- a new slot is first booted as a **trial** with `tries_left` boots; each boot of it uses one;
- only the running trial can **commit** itself (after its health check): then it is active;
- a trial that fails its check, or whose boots end in a crash without having committed (the
  counter runs out), is dropped and the active slot boots again;
- a trial boot that ended and nobody saw how (the power went, the process was killed: nothing
  recorded its end) was **interrupted**: that boot is given back, up to `MAX_INTERRUPTIONS`
  times, then the trial is dropped as interrupted. A power cut is not the release's fault.

How the counter tells a crash from an interruption: whoever runs the agent (the launcher,
`edge_agent.launcher`, the part of a board's init that watches the application) records how each
trial boot ended (`ended`): the agent exited with an error or by a signal it raised itself (a
crash), or it hung past the trial's deadline and was killed (a hang). A trial boot with no such
record when the next boot comes was cut from outside: the power, kill -9, an operator.

`BootControl.boot()` is the bootloader's step at every start; `next_boot()` says what it will
choose without choosing (the simulator uses it to know which version will run).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from edge_agent.state_files import read_json, write_json

log = structlog.get_logger(__name__)

Slot = Literal["a", "b"]
SlotState = Literal["good", "installing", "ready", "bad"]
RELEASE_FILE = "release.json"
PAYLOAD_FILE = "payload.bin"
# Trial boots cut from outside (power, kill) that are given back before the trial is dropped.
MAX_INTERRUPTIONS = 3


def other(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


@dataclass(frozen=True, slots=True)
class BootChoice:
    slot: Slot
    version: str
    trial: bool  # booted to try a new slot, not yet committed
    rolled_back: bool  # a trial was dropped on this boot: the old slot runs again
    interrupted: int = 0  # trial boots of this slot that were cut from outside and given back
    dropped: str | None = None  # with rolled_back: why the trial was dropped, for people
    dropped_interrupted: bool = False  # with rolled_back: dropped for interruptions, not a crash


class BootControl:
    """The slots under `<state>/slots/{a,b}` and the environment in `<state>/bootctl.json`."""

    def __init__(self, state_dir: Path, *, factory_version: str, factory_slot: Slot = "a") -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.root = state_dir / "slots"
        self._path = state_dir / "bootctl.json"
        env = read_json(self._path)
        if env is None or env.get("active") not in ("a", "b"):
            # First boot (or an unreadable environment, which a bootloader also answers with
            # its defaults): the factory image in its slot is the working one.
            env = {"active": factory_slot, "trial": None, "tries_left": 0, "slots": {}}
            env["slots"][factory_slot] = {"version": factory_version, "state": "good"}
            self._save(env)
        self._env: dict[str, Any] = env

    # -- what the bootloader does --------------------------------------------------------

    def next_boot(self) -> BootChoice:
        env = self._env
        trial = env.get("trial")
        interrupted = int(env.get("interrupted", 0))
        if trial in ("a", "b") and self._slot(trial).get("state") == "ready":
            unseen = self._cut_from_outside()
            if int(env.get("tries_left", 0)) > 0 or (unseen and interrupted < MAX_INTERRUPTIONS):
                return BootChoice(trial, self.version_of(trial), True, False, interrupted + unseen)
            active = env["active"]
            if unseen:
                why = f"slot {trial} ({self.version_of(trial)}): {interrupted + 1} trial boots cut (power or kill)"
            else:
                ending = env.get("trial_ended") or "restarted before it committed"
                why = f"slot {trial} ({self.version_of(trial)}): {ending}"
            return BootChoice(active, self.version_of(active), False, True, interrupted, why, bool(unseen))
        active = env["active"]
        dropped = trial is not None
        return BootChoice(
            active,
            self.version_of(active),
            False,
            dropped,
            interrupted,
            env.get("dropped"),
            bool(env.get("dropped_interrupted")),
        )

    def boot(self) -> BootChoice:
        """Choose the slot for this start, using up one try of a trial (or giving back the last
        one, if it was cut from outside)."""
        choice = self.next_boot()
        env = self._env
        if choice.trial:
            if self._cut_from_outside():
                log.warning("trial boot was cut from outside; trying it again", slot=choice.slot, n=choice.interrupted)
                env["interrupted"] = choice.interrupted
            else:
                env["tries_left"] = int(env["tries_left"]) - 1
            env["trial_boot"], env["trial_ended"] = choice.slot, None
        elif choice.rolled_back:
            dropped = env["trial"]
            log.warning("trial slot dropped", slot=dropped, why=choice.dropped)
            if dropped in ("a", "b"):
                self._slot(dropped)["state"] = "bad"
            env["trial"], env["tries_left"] = None, 0
            env["trial_boot"], env["trial_ended"], env["interrupted"] = None, None, 0
            env["dropped"], env["dropped_interrupted"] = choice.dropped, choice.dropped_interrupted
        self._save(env)
        return choice

    def ended(self, how: str) -> None:
        """The launcher saw this boot end (`how`: "crashed: exit 1: ImportError ...", "hung ...",
        or "restart asked"). Only a trial boot's end matters to the next boot."""
        if self._env.get("trial_boot") is not None:
            self._env["trial_ended"] = how[:200]
            self._save(self._env)

    def reload(self) -> None:
        """Read the environment again (another process, the agent, changed it)."""
        env = read_json(self._path)
        if env is not None and env.get("active") in ("a", "b"):
            self._env = env

    def _cut_from_outside(self) -> int:
        """1 if the last boot was a trial boot whose end nobody recorded, else 0."""
        env = self._env
        return int(
            env.get("trial_boot") is not None
            and env.get("trial_boot") == env.get("trial")
            and env.get("trial_ended") is None
        )

    # -- what the running system does ----------------------------------------------------

    @property
    def active(self) -> Slot:
        slot: Slot = self._env["active"]
        return slot

    def version_of(self, slot: Slot) -> str:
        return str(self._slot(slot).get("version") or "")

    def folder(self, slot: Slot) -> Path:
        return self.root / slot

    def begin_install(self, slot: Slot) -> Path:
        """Empty `slot` for a new image and mark it unbootable until `finish_install`."""
        if slot == self.active:
            raise ValueError(f"slot {slot} is the active slot; an update never writes it")
        self._env["slots"][slot] = {"version": None, "state": "installing"}
        if self._env.get("trial") == slot:
            self._env["trial"], self._env["tries_left"] = None, 0
        self._save(self._env)
        folder = self.folder(slot)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def finish_install(self, slot: Slot, version: str) -> None:
        """`slot` holds a complete image of `version` (its files are on the flash)."""
        _sync_folder(self.folder(slot))
        self._env["slots"][slot] = {"version": version, "state": "ready"}
        self._save(self._env)

    def try_next(self, slot: Slot, *, tries: int = 1) -> None:
        """Boot `slot` next, as a trial with `tries` boots to commit in."""
        if self._slot(slot).get("state") != "ready":
            raise ValueError(f"slot {slot} holds no complete image")
        self._env["trial"], self._env["tries_left"] = slot, tries
        self._env["dropped"], self._env["dropped_interrupted"] = None, False
        self._clear_trial()

    def commit(self, slot: Slot) -> None:
        """The running trial `slot` passed its health check: it boots from now on."""
        self._env["slots"][slot]["state"] = "good"
        self._env["active"], self._env["trial"], self._env["tries_left"] = slot, None, 0
        self._clear_trial()

    def abandon(self, slot: Slot, why: str | None = None) -> None:
        """The trial `slot` failed (`why`): the next boot is the active slot again."""
        self._slot(slot)["state"] = "bad"
        if self._env.get("trial") == slot:
            self._env["trial"], self._env["tries_left"] = None, 0
        self._env["dropped"] = why
        self._clear_trial()

    def _clear_trial(self) -> None:
        self._env["trial_boot"], self._env["trial_ended"], self._env["interrupted"] = None, None, 0
        self._save(self._env)

    def bootable(self) -> list[Slot]:
        """The slots a boot could end in that hold a working image."""
        return [s for s in ("a", "b") if self._slot(s).get("state") == "good"]

    def _slot(self, slot: str) -> dict[str, Any]:
        slots: dict[str, dict[str, Any]] = self._env.setdefault("slots", {})
        return slots.setdefault(slot, {"version": None, "state": "bad"})

    def _save(self, env: dict[str, Any]) -> None:
        write_json(self._path, env, durable=True)


def _sync_folder(folder: Path) -> None:
    """The slot's files and its folder's entries on the flash (an unpacked build syncs its own)."""
    for path in [*folder.iterdir(), folder]:
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
