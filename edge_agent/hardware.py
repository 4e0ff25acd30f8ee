"""Ports to the device's hardware other than audio, with simulated adapters.

The serial adapters (4G modem AT commands, TTS chip) arrive with the serial codecs; until then
the simulated modem stands in, on boards and in the simulated fleet alike.
"""

from __future__ import annotations

import random
from typing import Protocol


class Modem(Protocol):
    """The cellular modem, as far as health reporting needs it."""

    async def signal_dbm(self) -> int | None:
        """Received signal strength in dBm, or None when unknown (no SIM, no network)."""
        ...


class SimulatedModem:
    """A modem with a steady signal around `mean_dbm`, varying as a real one does."""

    def __init__(self, mean_dbm: int = -75, spread_db: int = 6, seed: int | None = None) -> None:
        self._mean = mean_dbm
        self._spread = spread_db
        self._random = random.Random(seed)  # noqa: S311 - simulated signal, not security.

    async def signal_dbm(self) -> int | None:
        value = round(self._random.gauss(self._mean, self._spread / 2))
        return max(-120, min(-40, value))
