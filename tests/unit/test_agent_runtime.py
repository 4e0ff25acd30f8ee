"""The agent beyond one announce: merchant settings, alerts, remote commands, boots, diagnose."""

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import diagnose, logbook
from edge_agent.boot import BootRecord, StateFolderBusy, StateLock
from edge_agent.hardware.audio import MemorySink
from edge_agent.hardware.ports import SystemStatus
from edge_agent.hardware.system import FakeSystemInfo
from firmware_protocols.messages import DailySpan, Health
from firmware_protocols.signing import Signer
from tests.unit.agent_kit import announce, command, deliver, make_agent, make_config, play_all, settings, uplinks

pytestmark = pytest.mark.anyio

# 2023-11-14 22:13:20 UTC is 06:13:20 in Beijing (UTC+8): FakeClock's default time.
BEIJING_0613 = 1_700_000_000_000


async def finish_commands(agent):
    """Run the agent's commands to their answers, playing what they queue."""
    idle = asyncio.create_task(agent.commands.wait_idle())
    while not idle.done():
        await asyncio.sleep(0)
        await play_all(agent)
    await idle


def acks(sent):
    return [body for kind, body in sent if kind == "ack"]


def results(sent):
    return [(body["status"], body.get("reason"), body["result"]) for kind, body in sent if kind == "result"]


async def test_settings_change_volume_and_repeat_and_survive_a_restart(tmp_path, clock):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    await deliver(agent, settings(clock, version=5, volume=3, repeat=2))
    assert agent.settings.current.volume == 3
    await deliver(agent, announce(clock))
    await play_all(agent)
    assert [r.text for r in sink.played] == ["微信收款十二点五元，微信收款十二点五元"]
    assert (await agent.reporter.health()).volume == 3
    restarted = make_agent(tmp_path / ".", clock, MemorySink())
    assert (restarted.settings.current.version, restarted.settings.current.volume) == (5, 3)


async def test_an_older_retained_settings_copy_does_not_undo_a_newer_one(tmp_path, clock):
    agent = make_agent(tmp_path, clock, MemorySink())
    await deliver(agent, settings(clock, version=9, volume=2))
    await deliver(agent, settings(clock, version=8, volume=9))
    assert agent.settings.current.volume == 2


@pytest.mark.parametrize(
    "forge",
    [
        lambda s: s.model_copy(update={"volume": 10}),
        lambda s: s.model_copy(update={"sig": ""}),
        lambda s: Signer(Ed25519PrivateKey.generate()).sign(s),
    ],
)
async def test_forged_settings_are_refused_and_reported(tmp_path, clock, forge):
    agent = make_agent(tmp_path, clock, MemorySink())
    await deliver(agent, forge(settings(clock, volume=1)))
    assert agent.settings.current.volume == 7
    assert [body["kind"] for kind, body in uplinks(agent) if kind == "event"] == ["settings_refused"]


async def test_quiet_hours_silence_an_announcement_but_still_ack_it(tmp_path, clock):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    quiet = DailySpan(start="22:00", end="07:00")  # 06:13 in Beijing is inside
    await deliver(agent, settings(clock, quiet_hours=quiet.model_dump()))
    await deliver(agent, announce(clock))
    await play_all(agent)
    assert sink.played == []
    [ack] = acks(uplinks(agent))
    assert (ack["status"], ack["reason"]) == ("silenced", "quiet hours")
    clock.advance(60 * 60_000)  # 07:13: quiet hours are over
    await deliver(agent, announce(clock, "P2"))
    await play_all(agent)
    assert [r.name for r in sink.played] == ["P2"]


@pytest.mark.parametrize(
    ("start", "end", "minute", "quiet"),
    [
        ("22:00", "07:00", 23 * 60, True),
        ("22:00", "07:00", 7 * 60, False),
        ("12:00", "14:00", 13 * 60, True),
        ("12:00", "14:00", 14 * 60, False),
        ("00:00", "00:00", 0, False),
    ],
)
def test_quiet_hours_cross_midnight(start, end, minute, quiet):
    assert DailySpan(start=start, end=end).contains(minute) is quiet


async def test_alerts_speak_a_fixed_phrase_and_no_alert_code_means_no_alert(tmp_path, clock):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    await deliver(agent, announce(clock, "A1", kind="alert", alert="bound", amount_fen=0))
    await play_all(agent)
    assert [r.text for r in sink.played] == ["设备绑定成功"]
    with pytest.raises(ValueError, match="alert"):
        announce(clock, "A2", kind="alert", amount_fen=0)
    with pytest.raises(ValueError, match="alert"):
        announce(clock, "A3", alert="test")


async def test_an_announce_that_waited_past_its_ttl_in_the_queue_is_not_played(tmp_path, clock):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    await deliver(agent, announce(clock, ttl_s=5))
    clock.advance(6_000)  # the speaker was busy with something long
    await play_all(agent)
    assert sink.played == []
    assert [a["status"] for a in acks(uplinks(agent))] == ["expired"]


async def test_set_volume_command_is_accepted_run_and_answered(tmp_path, clock):
    agent = make_agent(tmp_path, clock, MemorySink())
    await deliver(agent, command(clock, "set_volume", args={"volume": 4}))
    await finish_commands(agent)
    assert results(uplinks(agent)) == [("accepted", None, {}), ("succeeded", None, {"volume": 4})]
    assert agent.settings.current.volume == 4


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("self_destruct", {}, "unknown command 'self_destruct'"),
        ("set_volume", {"volume": 11}, "bad arguments for set_volume: volume"),
        ("set_volume", {"volume": "4"}, "bad arguments for set_volume: volume"),
        ("fetch_log", {"lines": 5, "extra": 1}, "bad arguments for fetch_log: extra"),
        ("set_config", {"key": "broker_url", "value": "mqtt://evil"}, "bad arguments for set_config: key"),
    ],
)
async def test_unknown_and_malformed_commands_are_refused_with_a_reason(tmp_path, clock, name, args, reason):
    agent = make_agent(tmp_path, clock, MemorySink())
    await deliver(agent, command(clock, name, args=args))
    [(status, why, _)] = results(uplinks(agent))
    assert status == "refused"
    assert why.startswith(reason)


async def test_unsigned_expired_and_repeated_commands_are_not_run(tmp_path, clock):
    agent = make_agent(tmp_path, clock, MemorySink())
    await deliver(agent, command(clock, "set_volume", args={"volume": 1}).model_copy(update={"sig": ""}))
    stale = command(clock, "set_volume", "C2", args={"volume": 1}, ttl_s=10)
    clock.advance(11_000)
    await deliver(agent, stale)
    fresh = command(clock, "set_volume", "C3", args={"volume": 2})
    await deliver(agent, fresh)
    await deliver(agent, fresh)  # redelivered
    await finish_commands(agent)
    statuses = [(status, (why or "")[:30]) for status, why, _ in results(uplinks(agent))]
    assert statuses == [
        ("refused", "command C1 (set_volume) for SP"),
        ("refused", "expired 1 s ago"),
        ("accepted", ""),
        ("duplicate", ""),
        ("succeeded", ""),
    ]
    assert agent.settings.current.volume == 2


async def test_test_announce_plays_the_test_phrase_and_reports_when(tmp_path, clock):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    await deliver(agent, settings(clock, volume=0))  # even a muted speaker
    await deliver(agent, command(clock, "test_announce"))
    await finish_commands(agent)
    assert [r.text for r in sink.played] == ["测试播报，收款成功"]
    assert results(uplinks(agent))[-1] == (
        "succeeded",
        None,
        {"text": "测试播报，收款成功", "play_started_after_ms": 0},
    )


async def test_test_announce_on_a_broken_speaker_fails_with_the_reason(tmp_path, clock):
    sink = MemorySink()
    sink.fault = "amplifier open circuit"
    agent = make_agent(tmp_path, clock, sink)
    await deliver(agent, command(clock, "test_announce"))
    await finish_commands(agent)
    assert results(uplinks(agent))[-1][:2] == ("failed", "speaker: speaker fault: amplifier open circuit")


async def test_fetch_log_returns_the_devices_recent_lines(tmp_path, clock):
    agent = make_agent(tmp_path, clock, MemorySink())
    logbook.forget("SPK1")
    for i in range(3):
        logbook.capture(None, "info", {"event": f"line {i}", "device_id": "SPK1", "n": i})
    logbook.capture(None, "info", {"event": "other device", "device_id": "SPK2"})
    await deliver(agent, command(clock, "fetch_log", args={"lines": 2}))
    await finish_commands(agent)
    status, _, result = results(uplinks(agent))[-1]
    assert status == "succeeded"
    assert [line.split(" ", 2)[2] for line in result["lines"]] == ["line 1 n=1", "line 2 n=2"]


async def test_set_config_changes_the_health_interval_and_keeps_it(tmp_path, clock):
    agent = make_agent(tmp_path, clock, MemorySink())
    await deliver(agent, command(clock, "set_config", args={"key": "health_interval_s", "value": 15}))
    await deliver(agent, command(clock, "set_config", "C2", args={"key": "health_interval_s", "value": -1}))
    await finish_commands(agent)
    assert sorted(r[:2] for r in results(uplinks(agent)) if r[0] != "accepted") == [
        ("failed", "bad value for health_interval_s: Input should be greater than 0"),
        ("succeeded", None),
    ]
    assert agent.config.health_interval_s == 15
    # The next report says the new interval: the fleet expects the device at it from then on.
    assert (await agent.reporter.health()).interval_s == 15
    assert make_agent(tmp_path, clock, MemorySink()).config.health_interval_s == 15


async def test_reboot_command_records_why_the_next_boot_happens(tmp_path, clock):
    async with make_agent(tmp_path, clock, MemorySink()) as agent:
        assert agent.boot.reason == "first_boot"
        await deliver(agent, command(clock, "reboot"))
        await agent.restart_requested.wait()
    async with make_agent(tmp_path, clock, MemorySink()) as agent:
        assert agent.boot.reason == "command"
    async with make_agent(tmp_path, clock, MemorySink()) as agent:
        assert agent.boot.reason == "clean"
    BootRecord(tmp_path, clock.now_ms())  # started, then the power went: no clean stop recorded
    assert BootRecord(tmp_path, clock.now_ms()).boot.reason == "unclean"


def test_two_agents_cannot_share_a_state_folder(tmp_path):
    first = StateLock(tmp_path)
    first.acquire()
    assert StateLock(tmp_path).holder() is not None
    with pytest.raises(StateFolderBusy, match="already runs"):
        StateLock(tmp_path).acquire()
    first.release()
    assert StateLock(tmp_path).holder() is None


def test_a_full_disk_does_not_stop_the_agent_taking_its_lock(tmp_path):
    # /dev/full answers every write with ENOSPC, as the state folder's disk did in the fault case.
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    (tmp_path / "agent.lock").symlink_to("/dev/full")
    lock = StateLock(tmp_path)
    lock.acquire()  # locked, though the pid could not be written
    lock.release()


async def test_health_carries_the_runtime_and_power_fields(tmp_path, clock):
    system = FakeSystemInfo(SystemStatus(disk_free_kb=1000, battery_pct=12, charging=False, cpu_pct=3.5))
    agent = make_agent(tmp_path, clock, MemorySink(), system=system)
    health = await agent.reporter.health()
    assert (health.firmware, health.slot, health.audio_selftest, health.network) == ("0.1.0", "a", "pass", "4g")
    assert (health.battery_pct, health.cpu_pct, health.errors["play_failures"]) == (12, 3.5, 0)
    await agent.reporter.check_parts()
    events = {body["detail"]["part"]: body["detail"]["state"] for kind, body in uplinks(agent) if kind == "event"}
    assert events == {"storage": "full", "battery": "low"}


async def test_diagnose_checklist_names_what_fails_and_how_to_fix_it(tmp_path, clock):
    system = FakeSystemInfo(SystemStatus(disk_free_kb=10 * 1024 * 1024, battery_pct=80, charging=True))
    agent = make_agent(tmp_path, clock, MemorySink(), system=system)
    checks = {c.key: c for c in await agent.reporter.run_diagnose()}
    assert checks["power"].status == "pass"
    assert checks["broker"].status == "fail"  # no broker in a unit test
    assert "连不上服务器" in checks["broker"].hint_zh
    assert checks["last_announcement"].status == "warn"
    await deliver(agent, announce(clock))
    await play_all(agent)
    checks = {c.key: c for c in await agent.reporter.run_diagnose()}
    assert checks["last_announcement"].detail_zh == "0 分钟前：微信收款十二点五元"
    text = diagnose.render(list(checks.values()), device_id="SPK1", lang="en", now_ms=clock.now_ms())
    assert "[FAIL] broker" in text
    assert "result: 1 failed" in text
    summary = diagnose.as_json(list(checks.values()), device_id="SPK1", lang="zh")
    assert summary["ok"] is False
    assert json.dumps(summary, ensure_ascii=False).count("服务器连接") == 1


def checks_of(health: dict, now_ms: int, config) -> dict[str, diagnose.Check]:
    """The checklist over a health report, as a diagnose run beside the agent makes it."""
    observed = diagnose.Observed(
        health=Health.model_validate(health),
        broker_ok=True,
        broker_detail="mqtt://127.0.0.1:1883",
        now_ms=now_ms,
        agent_pid=1,
        last_announcement=None,
    )
    return {c.key: c for c in diagnose.checklist(observed, config)}


BASE_HEALTH = {"device_id": "SPK1", "ts": 1, "uptime_s": 1, "volume": 5, "queue_depth": 0, "played_total": 0}


def test_a_bad_clock_fails_the_clock_check(tmp_path, clock):
    config = make_config(tmp_path)
    assert checks_of(BASE_HEALTH, 0, config)["clock"].status == "fail"
    assert checks_of(BASE_HEALTH, clock.now_ms() + 10**12, config)["clock"].status == "pass"


class SpeakerThatHangsOn(MemorySink):
    """Plays everything but `name`, which starts and never ends: the process dies meanwhile."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.hang_on = name
        self.hanging = asyncio.Event()

    async def play(self, rendered):
        if rendered.name == self.hang_on:
            self.hanging.set()
            await asyncio.Event().wait()
        await super().play(rendered)


async def test_announcements_a_killed_agent_took_but_never_started_are_played_after_restart(tmp_path, clock):
    speaker = SpeakerThatHangsOn("P2")
    first = make_agent(tmp_path, clock, speaker)
    for payment_id in ("P1", "P2", "P3"):
        await deliver(first, announce(clock, payment_id))
    assert await first.announcer.play_next()  # P1 played
    speaking = asyncio.create_task(first.announcer.play_next())
    await speaker.hanging.wait()  # P2 has started...
    speaking.cancel()  # ...and the process is killed; P3 never started
    sink = MemorySink()
    second = make_agent(tmp_path, clock, sink)
    assert second.announcer.replay_unplayed() == 1
    await play_all(second)
    assert [r.name for r in sink.played] == ["P3"]  # P2 may have been heard: never twice
    await deliver(second, announce(clock, "P3"))  # the broker's redelivery
    assert second.announcer.queued == 0
    # The first run's unsent ack is still in the outbox on disk, ahead of the second run's.
    assert [(a["payment_id"], a["status"]) for a in acks(uplinks(second))] == [
        ("P1", "played"),
        ("P3", "played"),
        ("P3", "duplicate"),
    ]


def test_a_printer_out_of_paper_fails_with_a_hint_and_no_printer_means_no_check(tmp_path, clock):
    config = make_config(tmp_path)
    assert "printer" not in checks_of(BASE_HEALTH, clock.now_ms(), config)
    check = checks_of({**BASE_HEALTH, "printer": "paper_out"}, clock.now_ms(), config)["printer"]
    assert (check.status, check.hint_zh) == ("fail", "缺纸：装入热敏纸卷")
