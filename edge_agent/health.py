"""What the device's parts say, as one health report, and which of them turned bad or good.

`read_parts` asks every hardware port at once (each sits on its own line and thread), and
`health_report` puts that together with the runtime's own figures. `PartWatch` compares each
report with the last: a part that turns bad is a `fault` event, one that turns good again a
`recovered` event, any other change (a swapped SIM) a `hardware_changed` event, all sent at
once rather than with the next report. The local diagnose reads the same report.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_agent.config import AgentConfig
from edge_agent.hardware.errors import HardwareError
from edge_agent.hardware.ports import (
    Modem,
    ModemStatus,
    Printer,
    PrinterStatusReport,
    SystemInfo,
    SystemStatus,
    TtsState,
)
from edge_agent.voice import Speaker
from firmware_protocols.messages import CellReport, GpsFix, Health

# The modem's radio access technology, as health reports name the network.
NETWORK_OF_RAT: dict[str, Literal["2g", "3g", "4g", "5g"]] = {
    "GSM": "2g",
    "EDGE": "2g",
    "WCDMA": "3g",
    "HSPA": "3g",
    "TDSCDMA": "3g",
    "LTE": "4g",
    "CAT-M": "4g",
    "CAT-NB": "4g",
    "NR5G": "5g",
    "NR5G-SA": "5g",
    "NR5G-NSA": "5g",
}

# Part states that are not faults ("" is a part the device lacks).
GOOD_STATES = frozenset({"", "ok", "home", "roaming", "paper_low", "charging"})
# Parts whose every change is news but never a fault: the SIM is reported by its id.
_NEUTRAL_PARTS = frozenset({"sim"})


@dataclass(frozen=True, slots=True)
class Parts:
    modem: ModemStatus
    printer: PrinterStatusReport | None
    system: SystemStatus | None
    tts: TtsState | None
    audio_error: str | None  # None: the audio self-test passed


async def _none() -> None:
    return None


async def _self_test(speaker: Speaker) -> str | None:
    try:
        await speaker.self_test()
    except HardwareError as exc:
        return str(exc)[:200]
    return None


async def read_parts(speaker: Speaker, modem: Modem, printer: Printer | None, system: SystemInfo | None) -> Parts:
    """What every part says now, asked all at once."""
    modem_status, printer_status, system_status, tts, audio_error = await asyncio.gather(
        modem.status(),
        printer.status() if printer is not None else _none(),
        system.status() if system is not None else _none(),
        speaker.chip_state(),
        _self_test(speaker),
    )
    return Parts(modem_status, printer_status, system_status, tts, audio_error)


def rss_kb() -> int | None:
    """This process's resident memory, from /proc/self/statm."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * 4


def health_report(device_id: str, ts: int, parts: Parts, **runtime: Any) -> Health:
    """A health report from what the parts said and the runtime's own fields (uptime_s, volume,
    queue_depth, played_total, boot_id, boot_reason, firmware, slot, settings_version, errors)."""
    modem, system = parts.modem, parts.system
    return Health(
        device_id=device_id,
        ts=ts,
        rssi_dbm=modem.signal_dbm,
        mem_rss_kb=rss_kb(),
        signal_bars=modem.signal_bars,
        modem="ok" if modem.reachable else "unreachable",
        registration=modem.registration if modem.reachable else None,
        cell=CellReport(**dataclasses.asdict(modem.cell)) if modem.cell.rat else None,
        gps=GpsFix(lat=modem.gps[0], lon=modem.gps[1]) if modem.gps else None,
        network=NETWORK_OF_RAT.get((modem.cell.rat or "").upper()) if modem.reachable else None,
        iccid=modem.iccid,
        imei=modem.imei,
        tts=parts.tts,
        printer=parts.printer.state if parts.printer is not None else None,
        load_1m=system.load_1m if system else None,
        mem_available_kb=system.mem_available_kb if system else None,
        disk_free_kb=system.disk_free_kb if system else None,
        cpu_temp_c=system.cpu_temp_c if system else None,
        cpu_pct=system.cpu_pct if system else None,
        battery_pct=system.battery_pct if system else None,
        charging=system.charging if system else None,
        audio_selftest="fail" if parts.audio_error else "pass",
        **runtime,
    )


def part_states(health: Health, config: AgentConfig) -> dict[str, str]:
    """Each part's state in one word, as events and diagnose name it."""
    storage = ""
    if health.disk_free_kb is not None:
        storage = (
            "full"
            if health.disk_free_kb < config.storage_fail_kb
            else "low"
            if health.disk_free_kb < config.storage_warn_kb
            else "ok"
        )
    battery = ""
    if health.battery_pct is not None:
        battery = "charging" if health.charging else "low" if health.battery_pct < config.battery_low_pct else "ok"
    return {
        "audio": {"pass": "ok", "fail": "fail"}.get(health.audio_selftest or "", ""),
        "modem": health.modem or "",
        "registration": health.registration or "",
        "tts": "ok" if health.tts in ("idle", "busy") else health.tts or "",
        "printer": health.printer or "",
        "storage": storage,
        "battery": battery,
        "sim": health.iccid or "",
    }


@dataclass(frozen=True, slots=True)
class PartChange:
    kind: Literal["fault", "recovered", "hardware_changed"]
    part: str
    state: str
    was: str | None


class PartWatch:
    """Remembers each part's last state and says what changed."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    def changes(self, now: dict[str, str]) -> list[PartChange]:
        out: list[PartChange] = []
        for part, state in now.items():
            was = self.states.get(part)
            self.states[part] = state
            if part in _NEUTRAL_PARTS:
                if was is not None and state != was:
                    out.append(PartChange("hardware_changed", part, state, was))
                continue
            bad, was_bad = state not in GOOD_STATES, was is not None and was not in GOOD_STATES
            if bad and (was is None or state != was):
                out.append(PartChange("fault", part, state, was))
            elif was_bad and not bad:
                out.append(PartChange("recovered", part, state, was))
            elif was is not None and state != was:
                out.append(PartChange("hardware_changed", part, state, was))
        return out

    def faulty(self) -> dict[str, str]:
        return {part: state for part, state in self.states.items() if state not in GOOD_STATES}
