"""The demo's device with a wrong clock: 15 minutes slow at first, no clock battery, and a power
cut that sends its board back to 1970. The agent corrects it from the (simulated) network's time
each time and keeps announcing; this prints what happened, in Chinese and English."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from edge_agent.clock_check import SOURCE_ZH
from simulators.clocks import BoardClock
from simulators.fleet import SimulatedFleet

SKEW_S = -900.0


def clocks_for(device_ids: list[str]) -> dict[str, BoardClock]:
    """The last device's board clock is the wrong one."""
    return {device_ids[-1]: BoardClock(skew_s=SKEW_S, battery=False)} if device_ids else {}


def _state(fleet: SimulatedFleet, device_id: str) -> dict[str, Any] | None:
    agent = fleet.agent(device_id)
    return None if agent is None else agent.timekeeper.status()


def _line(device_id: str, state: dict[str, Any] | None) -> str:
    if state is None:
        return f"  时钟 clock: {device_id} 未运行 not running"
    board_off_s = -state["offset_ms"] / 1000
    source = str(state["source"])
    if abs(board_off_s) > 365 * 86400:
        shown = time.strftime("%Y-%m-%d %H:%M", time.gmtime(state["board_ms"] / 1000))
        zh, en = f"板载时钟在 {shown}", f"board clock at {shown} UTC"
    else:
        zh = f"板载时钟{'快' if board_off_s > 0 else '慢'} {abs(board_off_s):.0f} 秒"
        en = f"board clock {abs(board_off_s):.0f} s {'fast' if board_off_s > 0 else 'slow'}"
    return f"  时钟 clock: {device_id} {zh}，已按{SOURCE_ZH.get(source, source)}校正 / {en}, corrected from {source}"


async def show_clock_recovery(fleet: SimulatedFleet, timeout_s: float = 30.0) -> None:
    """Print the wrong clock's correction; cut the device's power (its board goes to 1970), wait
    until it is back online on corrected time, and print that too."""
    for device_id in fleet.clocks:
        print(_line(device_id, _state(fleet, device_id)))
        fleet.power_cut(device_id, off_s=1.0)
        print(
            f"  时钟 clock: {device_id} 断电重启，无时钟电池，板载时钟回到 1970 年"
            " / power cut: the board is back at 1970"
        )
        deadline = time.monotonic() + timeout_s
        await asyncio.sleep(1.5)
        while time.monotonic() < deadline:
            agent = fleet.agent(device_id)
            if agent is not None and agent.connected and agent.timekeeper.clock.synced:
                break
            await asyncio.sleep(0.2)
        else:
            print(f"  时钟 clock: {device_id} did not reconnect within {timeout_s:.0f} s")
            continue
        print(_line(device_id, _state(fleet, device_id)) + "；已重新上线 back online")
