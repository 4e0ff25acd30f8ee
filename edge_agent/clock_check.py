"""The checklist's clock item: the board's clock against trusted time (the server's signed time
where it could be asked, else the agent's last correction), how far off, and corrected or not."""

from __future__ import annotations

import time
from typing import Any

from edge_agent.check import Check
from firmware_protocols.credentials import DEFAULT_MAX_SKEW_S
from firmware_protocols.fields import TIME_FLOOR_MS

# A clock before this is a board that lost its time: every announce would look expired.
CLOCK_FLOOR_MS = TIME_FLOOR_MS
# A board clock within this of trusted time is right enough for everything time-based.
CLOCK_OK_S = 60


def clock_check(now_ms: int, clock: dict[str, Any] | None) -> Check:
    """The board's clock against trusted time: how far off, from which source, corrected or not."""
    shown = time.strftime("%Y-%m-%d %H:%M", time.localtime(now_ms / 1000))
    state = clock or {}
    samples = state.get("samples") or {}
    server = samples.get("server") if isinstance(samples.get("server"), dict) else None
    source = str(state.get("source") or "board")
    if server is not None and "offset_ms" in server:
        # Checked against the server just now: that is what the broker and the TTLs go by.
        offset, source, corrected = int(server["offset_ms"]), "server", source != "board"
    elif source != "board" and not source.startswith(("saved", "last saved")):
        offset, corrected = int(state.get("offset_ms") or 0), True
    else:
        offset, corrected = None, False
    refusal = state.get("last_refusal") if isinstance(state.get("last_refusal"), dict) else None
    if offset is None:
        if now_ms < CLOCK_FLOOR_MS or (refusal and "clock" in str(refusal.get("detail", ""))):
            why = str(refusal.get("detail", "")) if refusal else ""
            return Check(
                "clock",
                "fail",
                f"{shown}（无可信时间来源）{why}",
                f"{shown} (no trusted time source) {why}".strip(),
                "时钟不对，服务器会拒绝连接、播报会被判为过期：请检查 4G 信号（基站授时）和服务器时间地址 time_url",
                "The clock is wrong: the broker refuses the device and announces look expired; check the 4G "
                "signal (network time) and the time_url setting",
            )
        return Check(
            "clock",
            "warn" if clock is not None else "pass",
            f"{shown}（未校时）",
            f"{shown} (not checked)",
            "还没有可信时间来源：请配置服务器时间地址 time_url 或 NTP",
            "No trusted time source yet: set time_url or NTP",
        )
    off_s = round(-offset / 1000)
    zh = f"板载时钟{'快' if off_s > 0 else '慢'}了 {abs(off_s)} 秒（对照{SOURCE_ZH.get(source, source)}）"
    en = f"board clock {abs(off_s)} s {'fast' if off_s > 0 else 'slow'} (against {source})"
    if abs(off_s) <= CLOCK_OK_S:
        within_zh = f"与{SOURCE_ZH.get(source, source)}相差 {abs(offset) / 1000:.1f} 秒"
        within_en = f"within {abs(offset) / 1000:.1f} s of {source} time"
        return Check("clock", "pass", f"{shown}，{within_zh}", f"{shown}, {within_en}")
    if corrected:
        # Within what the broker allows, the board would still connect after a restart before
        # any source answers: a warning. Beyond it, it would not: a failure to repair.
        allowance = int(state.get("max_skew_s") or DEFAULT_MAX_SKEW_S)
        return Check(
            "clock",
            "warn" if abs(off_s) <= allowance else "fail",
            zh + "，播报程序已按校正后的时间运行",
            en + "; the agent runs on the corrected time",
            "板载时钟不准（可能没有时钟电池或晶振漂移）：收款播报不受影响；请更换时钟电池或主板，并确认网络授时开启",
            "The board clock is off (no clock battery, or a drifting crystal): announcements still work; replace "
            "the clock battery or board and keep network time on",
        )
    return Check(
        "clock",
        "fail",
        zh + "，尚未校正",
        en + ", not corrected",
        "时钟不对，服务器会拒绝连接、播报会被判为过期：重启播报程序让它重新对时；仍不对请检查 4G 信号和 time_url",
        "The clock is off and not corrected: the broker refuses the device and announces look expired; restart "
        "the agent so it syncs; if not, check the 4G signal and time_url",
    )


SOURCE_ZH = {
    "server": "服务器时间",
    "modem": "基站时间",
    "ntp": "NTP",
    "system": "系统 NTP",
    "signed message": "服务器签名消息",
}
