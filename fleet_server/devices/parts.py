"""What trouble with a part means for the device: the one place that says which part states are
a *failure* and which only *degrade* it (docs/architecture.md, "What counts").

    failed    the device cannot announce a payment: the speaker (audio self-test), the TTS chip,
              the modem (connectivity), power. The device goes `faulty`; the failure lasts until
              the device is verified healthy (VERIFY_CLEAN_REPORTS clean health reports in a row,
              whether after a field agent's visit or by itself), and that is its repair.
    degraded  the device still announces: the receipt printer (paper, cover), the battery, the
              storage (outbox and OTA space), the network registration (weak coverage). A
              maintenance finding and task for the field agent; no failure, no repair, no
              downtime in the figures.

A part the fleet does not know (newer firmware) degrades: it is reported to the field agent,
and a failure is only what is known to stop announcements.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Impact(StrEnum):
    FAILED = "failed"
    DEGRADED = "degraded"


# The parts whose fault stops announcements (the agent's part names, edge_agent.health.part_states).
FAILED_PARTS: Final = frozenset({"audio", "tts", "modem", "power"})
# The parts whose trouble leaves the device announcing; listed so docs and tests can name them.
DEGRADED_PARTS: Final = frozenset({"printer", "battery", "storage", "registration"})

# A failure ends when this many clean health reports in a row arrive (a health interval apart):
# one clean report right after a fault may be luck; two are a working device. The repair time
# (MTTR) runs from the fault detected to that moment.
VERIFY_CLEAN_REPORTS: Final = 2

PART_NAMES_ZH: Final = {
    "audio": "喇叭",
    "tts": "语音芯片",
    "modem": "4G模块",
    "power": "电源",
    "printer": "打印机",
    "battery": "电池",
    "storage": "存储",
    "registration": "网络注册",
}


def impact_of(part: object) -> Impact:
    """Failed or degraded, for a fault event's `part` (anything a device may send)."""
    return Impact.FAILED if isinstance(part, str) and part in FAILED_PARTS else Impact.DEGRADED
