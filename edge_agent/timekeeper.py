"""Time the device can trust: the board's clock, corrected by an offset from the best time source.

Boards without a battery-backed clock start at 1970, or at the last saved time, after a power
cut, and cheap crystals drift (200 ppm is 17 s a day). Everything time-based on the device runs
on `TrustedClock.now_ms()`: announce TTLs, command and offer expiry, quiet hours, install
windows, the signed MQTT password, the times in every report.

    sources      best first (`time_sources`): system NTP, our SNTP, the modem, the server's
                 signed time. All are asked at each sync; the best that answers is used,
                 except that an unsigned time more than `AGREE_MS` away from the signed server
                 time is overruled by it: no one on the radio or the LAN moves the clock away
                 from what the server signed.
    bounds       every signed message from the server proves its clock had reached the
                 message's `ts`: a trusted clock behind that is moved forward (`observe_signed`)
    refusals     the broker refuses a password whose time is off (MQTT 3.1.1 cannot say why):
                 `explain_refusal` syncs at once and says whether the clock was the reason
    persisted    `clock.json` in the state folder: a restart starts from the saved offset, and a
                 board reset to an earlier time starts no earlier than the last trusted time

The keeper never sets the board's clock (that needs privileges the agent does not have); the
correction lives in the agent's own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from edge_agent.clock import Clock
from edge_agent.state_files import read_json, write_json
from edge_agent.time_sources import TimeSample, TimeSource, TimeSourceError
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

CLOCK_FILE = "clock.json"
# An unsigned source this far from the server's signed time is overruled by it.
AGREE_MS = 5_000
# Signed messages are stamped by several server processes: a clock this far behind one is
# moved forward (a smaller gap is the servers' own disagreement, or the message's transit).
SIGNED_SLACK_MS = 2_000
# A wake (an announce that looked expired) asks the sources again, but not more often than this.
WAKE_AFTER_S = 30.0
# Saved at most this often between syncs, so that the last trusted time after a power cut is recent.
SAVE_EVERY_S = 60.0


class TrustedClock:
    """The board's clock plus the offset the keeper found (0 until it finds one)."""

    def __init__(self, board: Clock) -> None:
        self.board = board
        self.offset_ms = 0
        self.source = "board"  # where the offset came from
        self.error_ms: int | None = None  # None: never synchronised
        self.synced_at_ms: int | None = None  # trusted time of the last sync

    def now_ms(self) -> int:
        return self.board.now_ms() + self.offset_ms

    @property
    def synced(self) -> bool:
        return self.synced_at_ms is not None

    def adopt(self, sample: TimeSample) -> int:
        """Use `sample`'s offset unless the clock is already within the sample's own error of
        it (a modem's whole seconds must not move a clock NTP keeps to the millisecond); return
        how far the clock moved (ms)."""
        moved = sample.offset_ms - self.offset_ms
        if abs(moved) <= sample.error_ms:
            moved = 0
        else:
            self.offset_ms = sample.offset_ms
        self.source, self.error_ms = sample.source, sample.error_ms
        self.synced_at_ms = self.now_ms()
        return moved


class TimeKeeper(Component):
    def __init__(
        self,
        device_id: str,
        clock: TrustedClock,
        sources: list[TimeSource],
        state_dir: Path,
        *,
        interval_s: float = 3600.0,
        retry_s: float = 30.0,
        first_sync_s: float = 8.0,
    ) -> None:
        self.device_id = device_id
        self.clock = clock
        self.sources = sources
        self._path = state_dir / CLOCK_FILE
        self._interval_s = interval_s
        self._retry_s = retry_s
        self._first_sync_s = first_sync_s
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.samples: dict[str, dict[str, Any]] = {}  # each source's last answer or error
        self.max_skew_s: int | None = None  # the broker's allowance, as the server last said
        self.last_refusal: dict[str, Any] | None = None
        self._synced_mono = -1e9  # when the sources were last asked (monotonic)
        self._log = log.bind(device_id=device_id)
        self._load()

    # -- lifecycle -------------------------------------------------------------------------

    async def _start(self, stack: AsyncExitStack) -> None:
        if self.sources:
            # The first connect signs its password with this clock: give the sources a moment.
            try:
                await asyncio.wait_for(self.sync(), self._first_sync_s)
            except TimeoutError:
                self._log.warning("no time source answered at start; going on with the board's clock")
        spawn(stack, self._loop(), name=f"timekeeper:{self.device_id}")
        stack.callback(self.save)

    async def _loop(self) -> None:
        while True:
            wait_s = self._interval_s if self.clock.synced else self._retry_s
            woken = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(wait_s, SAVE_EVERY_S))
                woken = True
            self._wake.clear()
            since_sync_s = time.monotonic() - self._synced_mono
            due = since_sync_s >= wait_s or (woken and since_sync_s >= WAKE_AFTER_S)
            if self.sources and due:
                await self.sync()
            else:
                self.save()

    # -- syncing ---------------------------------------------------------------------------

    async def sync(self) -> TimeSample | None:
        """Ask every source; adopt the best usable sample; None if none answered."""
        async with self._lock:
            self._synced_mono = time.monotonic()
            results = await asyncio.gather(*(self._ask(s) for s in self.sources))
            samples = [r for r in results if r is not None]
            if not samples:
                return None
            chosen = samples[0]  # sources are listed best first
            signed = next((s for s in samples if s.signed), None)
            if signed is not None:
                self.max_skew_s = signed.max_skew_s
                if not chosen.signed and abs(chosen.offset_ms - signed.offset_ms) > AGREE_MS:
                    self._log.warning(
                        "time source disagrees with the server's signed time; using the server's",
                        source=chosen.source,
                        apart_ms=chosen.offset_ms - signed.offset_ms,
                    )
                    chosen = signed
            moved = self.clock.adopt(chosen)
            if abs(moved) >= 1000:
                self._log.info("clock corrected", source=chosen.source, moved_ms=moved, offset_ms=chosen.offset_ms)
            self.save()
            return chosen

    async def _ask(self, source: TimeSource) -> TimeSample | None:
        try:
            sample = await source.sample(self.clock.board)
        except TimeSourceError as exc:
            self.samples[source.name] = {"error": str(exc)[:200], "at_ms": self.clock.now_ms()}
            self._log.debug("time source gave no time", source=source.name, error=str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a source's bug must not stop the others
            self.samples[source.name] = {"error": f"{type(exc).__name__}: {exc}"[:200], "at_ms": self.clock.now_ms()}
            self._log.exception("time source failed", source=source.name)
            return None
        self.samples[source.name] = {**asdict(sample), "at_ms": self.clock.board.now_ms() + sample.offset_ms}
        return sample

    def observe_signed(self, server_ts_ms: int, what: str) -> None:
        """A verified server message stamped `server_ts_ms`: the trusted clock is at least there."""
        behind = server_ts_ms - self.clock.now_ms()
        if behind > SIGNED_SLACK_MS:
            self.clock.offset_ms += behind
            self.clock.source = "signed message"
            self.clock.synced_at_ms = self.clock.now_ms()
            self._log.warning("clock behind the server's signed time; moved forward", behind_ms=behind, message=what)
            self.save()

    async def explain_refusal(self, reason: str) -> tuple[str, bool]:
        """The broker refused the connect (`reason`, the client's words): sync now, and say
        whether the clock was why. True if the clock moved enough that a retry may pass."""
        before = self.clock.offset_ms
        sample = await self.sync() if self.sources else None
        moved = self.clock.offset_ms - before
        allowance = self.max_skew_s
        if sample is None:
            detail = "no time source answered: the clock may be off (" + self._errors() + ")"
        elif allowance is not None and abs(moved) > allowance * 1000:
            detail = f"clock off by {moved / -1000:+.0f} s (the broker allows ±{allowance} s)"
            detail += f"; corrected from {sample.source}"
        elif abs(moved) >= 1000:
            detail = f"clock was off by {moved / -1000:+.0f} s; corrected from {sample.source}"
        else:
            detail = (
                f"not the clock (within {abs(moved)} ms of {sample.source} time): the device's credentials"
                " are wrong or revoked"
            )
        self.last_refusal = {"reason": reason[:120], "detail": detail, "at_ms": self.clock.now_ms()}
        self.save()
        return detail, abs(moved) >= 1000

    def wake(self) -> None:
        """Sync soon (something time-based looked wrong)."""
        self._wake.set()

    def _errors(self) -> str:
        return "; ".join(str(s.get("error")) for s in self.samples.values() if "error" in s) or "no sources"

    # -- state -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The clock as diagnose and the health report tell it."""
        c = self.clock
        return {
            "offset_ms": c.offset_ms,
            "source": c.source,
            "error_ms": c.error_ms,
            "synced_at_ms": c.synced_at_ms,
            "trusted_ms": c.now_ms(),
            "board_ms": c.board.now_ms(),
            "max_skew_s": self.max_skew_s,
            "samples": self.samples,
            "last_refusal": self.last_refusal,
        }

    def save(self) -> None:
        try:
            write_json(self._path, self.status())
        except OSError as exc:
            self._log.warning("cannot save the clock state", error=str(exc))

    def _load(self) -> None:
        saved = read_json(self._path)
        if not saved:
            return
        try:
            offset, trusted = int(saved["offset_ms"]), int(saved["trusted_ms"])
        except (KeyError, TypeError, ValueError):
            self._log.warning("clock state unreadable; starting from the board's clock", path=str(self._path))
            return
        c = self.clock
        c.offset_ms, c.source, c.error_ms = offset, f"saved ({saved.get('source', '?')})", None
        if isinstance(saved.get("max_skew_s"), int):
            self.max_skew_s = saved["max_skew_s"]
        if c.now_ms() < trusted:
            # The board went back in time (a power cut without a clock battery): it is at least
            # as late as the last trusted time saved.
            c.offset_ms = trusted - c.board.now_ms()
            c.source = "last saved time"
        self._log.info("clock state restored", offset_ms=c.offset_ms, source=c.source)
