"""Board clocks for simulated devices: fast, slow, drifting, or back at 1970 after a power cut.

    clock = BoardClock(skew_s=-900)                 # 15 minutes slow
    clock = BoardClock(drift_ppm=200)               # gains 17 s a day
    clock = BoardClock(battery=False, skew_s=...)   # no clock battery: a power cut resets it to 1970

A simulated device's agent runs on its board's clock (`EdgeAgent(clock=...)`) and corrects it as
a real one does, from the simulated modem's network time (the true time) or the server's signed
time. The true time is this machine's.
"""

from __future__ import annotations

import time


def true_ms() -> int:
    return time.time_ns() // 1_000_000


class BoardClock:
    def __init__(self, *, skew_s: float = 0.0, drift_ppm: float = 0.0, battery: bool = True) -> None:
        self.drift_ppm = drift_ppm
        self.battery = battery
        self._true_at = true_ms()
        self._board_at = self._true_at + round(skew_s * 1000)

    def now_ms(self) -> int:
        elapsed = true_ms() - self._true_at
        return self._board_at + round(elapsed * (1 + self.drift_ppm / 1e6))

    def power_cut(self) -> None:
        """The power goes: with a clock battery the clock runs on; without, it starts at 1970."""
        if not self.battery:
            self._true_at, self._board_at = true_ms(), 0

    def describe(self) -> str:
        off_s = (self.now_ms() - true_ms()) / 1000
        drift = f", drifting {self.drift_ppm:+.0f} ppm" if self.drift_ppm else ""
        battery = "" if self.battery else ", no clock battery"
        return f"board clock {off_s:+.0f} s{drift}{battery}"
