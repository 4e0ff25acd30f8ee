"""The checklist a field agent reads in front of a silent speaker: what is wrong, and what to do.

Each check is pass / warn / fail with what was measured and, when it is not a pass, a fix hint
in Chinese (English on request). The checks read one health report (see `health`) plus what
only the runtime knows: whether the broker answers, the clock, the last announcement. The same
checklist answers the remote `diagnose` command and `haodian agent diagnose` on the device.

The running agent leaves `status.json` (its last health report and link state) and
`last-announcement.json` in its state folder; a diagnose run beside it reads those instead of
opening serial ports the agent holds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.check import Check as Check  # noqa: PLC0414 - the checklist's item, named here too
from edge_agent.check import CheckStatus as CheckStatus  # noqa: PLC0414
from edge_agent.check import Lang as Lang  # noqa: PLC0414
from edge_agent.clock_check import clock_check
from edge_agent.config import AgentConfig
from edge_agent.health import part_states
from edge_agent.state_files import read_json
from firmware_protocols.messages import Health

STATUS_FILE = "status.json"
LAST_ANNOUNCEMENT_FILE = "last-announcement.json"
# A merchant with no announcement for this long is worth a question (idle, or a silent fault).
QUIET_DAYS_WARN = 3


TITLES: dict[str, tuple[str, str]] = {
    "agent": ("播报程序", "agent"),
    "power": ("电源", "power"),
    "storage": ("存储", "storage"),
    "audio": ("喇叭", "speaker"),
    "tts": ("TTS 芯片", "TTS chip"),
    "printer": ("打印机", "printer"),
    "modem": ("4G 模块", "4G modem"),
    "sim": ("SIM 卡", "SIM card"),
    "signal": ("信号", "signal"),
    "broker": ("服务器连接", "broker"),
    "clock": ("时钟", "clock"),
    "last_announcement": ("最近播报", "last announcement"),
}


@dataclass(frozen=True, slots=True)
class Observed:
    """What the checklist is about, besides the health report."""

    health: Health
    broker_ok: bool
    broker_detail: str
    now_ms: int
    agent_pid: int | None  # the running agent's pid, None when it is not running
    last_announcement: dict[str, Any] | None
    # The clock's state (`TimeKeeper.status()`, or its `clock.json`), with any fresh check of
    # the server's signed time as `samples["server"]`; None: nothing known beyond the board.
    clock: dict[str, Any] | None = None


def _power(h: Health, config: AgentConfig) -> Check:
    if h.battery_pct is None:
        return Check("power", "pass", "外接电源", "mains power")
    zh, en = f"电池 {h.battery_pct}%", f"battery {h.battery_pct}%"
    if h.charging:
        return Check("power", "pass", zh + "，充电中", en + ", charging")
    if h.battery_pct < config.battery_low_pct:
        status: CheckStatus = "fail" if h.battery_pct < 5 else "warn"
        return Check("power", status, zh, en, "电量低：请接上电源适配器充电", "Battery low: plug in the charger")
    return Check("power", "pass", zh, en)


def _storage(h: Health, config: AgentConfig) -> Check:
    if h.disk_free_kb is None:
        return Check("storage", "warn", "读不到剩余空间", "free space unknown", "重启设备", "Restart the device")
    zh, en = f"剩余 {h.disk_free_kb // 1024} MB", f"{h.disk_free_kb // 1024} MB free"
    state = part_states(h, config)["storage"]
    if state == "full":
        return Check(
            "storage",
            "fail",
            zh,
            en,
            "存储已满，播报记录无法保存：重启设备，仍满请联系运维",
            "Storage full: restart; if still full call operations",
        )
    if state == "low":
        return Check(
            "storage", "warn", zh, en, "存储空间不多：请联系运维清理", "Storage low: ask operations to clean up"
        )
    return Check("storage", "pass", zh, en)


def _audio(h: Health) -> Check:
    if h.audio_selftest == "fail":
        return Check(
            "audio",
            "fail",
            "自检失败",
            "self-test failed",
            "检查喇叭连线和功放；重启后仍失败请更换设备",
            "Check the speaker wiring and amplifier; replace the device if it still fails after a restart",
        )
    return Check("audio", "pass", "自检通过", "self-test passed")


def _tts(h: Health) -> Check:
    if h.tts is None:
        return Check("tts", "pass", "未配置（使用语音包）", "none (voice clips)")
    if h.tts == "unreachable":
        return Check(
            "tts",
            "fail",
            "无应答",
            "not answering",
            "检查 TTS 芯片串口连线，然后重启设备",
            "Check the TTS chip's serial wiring, then restart",
        )
    return Check("tts", "pass", "空闲" if h.tts == "idle" else "播报中", h.tts)


_PRINTER_HINTS = {
    "paper_out": ("缺纸：装入热敏纸卷", "Out of paper: load a thermal roll"),
    "cover_open": ("纸仓盖没关好：合上盖子", "Cover open: close it"),
    "paper_low": ("纸快用完了：准备新纸卷", "Paper low: have a new roll ready"),
}


def _printer(h: Health) -> list[Check]:
    """Only on devices with a printer (POS terminals)."""
    state = h.printer
    if state is None:
        return []
    if state == "ok":
        return [Check("printer", "pass", "正常", "ok")]
    zh, en = _PRINTER_HINTS.get(
        state, ("打印机无应答或故障：检查连线后重启", "Printer not answering or faulty: check its cable, restart")
    )
    return [Check("printer", "warn" if state == "paper_low" else "fail", state, state, zh, en)]


def _modem(h: Health) -> list[Check]:
    if h.modem != "ok":
        hint = (
            "4G 模块无应答：检查模块和天线连接，重启设备",
            "The modem does not answer: check it and its antenna, restart",
        )
        return [Check("modem", "fail", "无应答", "not answering", *hint)]
    network = (h.network or "?").upper()
    checks = [Check("modem", "pass", f"正常（{network}）", f"ok ({network})")]
    if not h.iccid:
        checks.append(
            Check(
                "sim",
                "fail",
                "未检测到",
                "not found",
                "检查 SIM 卡是否插好，触点是否干净",
                "Check the SIM is seated and its contacts are clean",
            )
        )
    else:
        checks.append(Check("sim", "pass", f"ICCID …{h.iccid[-6:]}", f"ICCID …{h.iccid[-6:]}"))
    bars, dbm = h.signal_bars or 0, f"{h.rssi_dbm} dBm" if h.rssi_dbm is not None else "?"
    zh, en = f"{bars} 格（{dbm}）", f"{bars} bars ({dbm})"
    if h.registration == "denied":
        checks.append(
            Check(
                "signal",
                "fail",
                zh + "，注册被拒",
                en + ", registration denied",
                "SIM 卡被网络拒绝：联系运营商查询是否停机或欠费",
                "The network refuses the SIM: ask the carrier (suspended or unpaid)",
            )
        )
    elif h.registration not in ("home", "roaming"):
        checks.append(
            Check(
                "signal",
                "fail",
                zh + "，未注册网络",
                en + ", not registered",
                "把音箱移到窗边或信号更好的地方，检查天线",
                "Move the speaker near a window or better coverage; check the antenna",
            )
        )
    elif bars <= 1:
        checks.append(
            Check(
                "signal",
                "warn",
                zh,
                en,
                "信号弱：把音箱移到窗边或信号更好的地方",
                "Weak signal: move the speaker near a window",
            )
        )
    else:
        checks.append(Check("signal", "pass", zh, en))
    return checks


def _last_announcement(last: dict[str, Any] | None, now_ms: int) -> Check:
    if not last:
        return Check(
            "last_announcement",
            "warn",
            "还没有播报过",
            "none yet",
            "请商户扫码付一笔小额测试",
            "Ask the merchant for a small test payment",
        )
    minutes = max(0, (now_ms - int(last.get("at_ms", 0))) // 60_000)
    age_zh = (
        f"{minutes} 分钟前"
        if minutes < 120
        else f"{minutes // 60} 小时前"
        if minutes < 2880
        else f"{minutes // 1440} 天前"
    )
    age_en = (
        f"{minutes} min ago"
        if minutes < 120
        else f"{minutes // 60} h ago"
        if minutes < 2880
        else f"{minutes // 1440} days ago"
    )
    text = str(last.get("text", ""))[:40]
    zh, en = f"{age_zh}：{text}", f"{age_en}: {text}"
    if minutes > QUIET_DAYS_WARN * 1440:
        return Check(
            "last_announcement",
            "warn",
            zh,
            en,
            "很久没有播报：问商户是否还在收款，或付一笔测试",
            "No announcement for days: ask if the merchant still takes payments, or pay a test",
        )
    return Check("last_announcement", "pass", zh, en)


def checklist(observed: Observed, config: AgentConfig) -> list[Check]:
    """Every check, in the order a field agent works through them."""
    h = observed.health
    agent = (
        Check("agent", "pass", f"运行中（pid {observed.agent_pid}）", f"running (pid {observed.agent_pid})")
        if observed.agent_pid is not None
        else Check(
            "agent",
            "fail",
            "未运行",
            "not running",
            "播报程序没有运行：重启设备",
            "The agent is not running: restart the device",
        )
    )
    broker = (
        Check("broker", "pass", observed.broker_detail, observed.broker_detail)
        if observed.broker_ok
        else Check(
            "broker",
            "fail",
            observed.broker_detail,
            observed.broker_detail,
            "连不上服务器：先看信号和 SIM 卡；都正常请联系运维",
            "Cannot reach the server: check signal and SIM first; if fine, call operations",
        )
    )
    return [
        agent,
        _power(h, config),
        _storage(h, config),
        _audio(h),
        _tts(h),
        *_printer(h),
        *_modem(h),
        broker,
        clock_check(observed.now_ms, observed.clock),
        _last_announcement(observed.last_announcement, observed.now_ms),
    ]


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def as_json(checks: list[Check], *, device_id: str, lang: Lang) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "ok": not failed(checks),
        "checks": [
            {
                "key": c.key,
                "title": TITLES[c.key][0 if lang == "zh" else 1],
                "status": c.status,
                "detail": c.detail(lang),
                "hint": c.hint(lang),
            }
            for c in checks
        ],
    }


def summary(checks: list[Check]) -> dict[str, Any]:
    """The checklist in a command result: short keys, both languages' hints left to the reader."""
    return {"ok": not failed(checks), "checks": [asdict(c) for c in checks]}


_MARK = {"zh": {"pass": "通过", "warn": "警告", "fail": "失败"}, "en": {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}}


def render(checks: list[Check], *, device_id: str, lang: Lang, now_ms: int) -> str:
    """The checklist as a person reads it on a terminal."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now_ms / 1000))
    head = f"好店设备自检 {device_id}  {when}" if lang == "zh" else f"Haodian device check {device_id}  {when}"
    lines = [head]
    width = 10
    for c in checks:
        title = TITLES[c.key][0 if lang == "zh" else 1]
        pad = width - sum(2 if ord(ch) > 0x2E7F else 1 for ch in title)
        lines.append(f"[{_MARK[lang][c.status]}] {title}{' ' * max(1, pad)}{c.detail(lang)}")
        if c.status != "pass" and c.hint(lang):
            lines.append(f"        → {c.hint(lang)}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    if lang == "zh":
        lines.append(f"结果：{fails} 项失败，{warns} 项警告" if fails or warns else "结果：全部通过")
    else:
        lines.append(f"result: {fails} failed, {warns} warnings" if fails or warns else "result: all passed")
    return "\n".join(lines)


# -- what the running agent leaves for a diagnose beside it -----------------------------


def read_status(state_dir: Path) -> tuple[Health, bool, int] | None:
    """The running agent's last health report, whether it was connected, and when it wrote them."""
    data = read_json(state_dir / STATUS_FILE)
    if data is None or not isinstance(data.get("health"), dict):
        return None
    try:
        health = Health.model_validate(data["health"])
    except ValidationError:
        return None
    return health, bool(data.get("connected")), int(data.get("written_ms", 0))
