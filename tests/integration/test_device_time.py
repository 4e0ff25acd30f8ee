"""A speaker with a wrong clock still announces every payment, and says why when it cannot
(issue 24). Real `haodian agent run` processes whose clocks libfaketime moves: fast, slow, a day
behind, 1970 after a power cut, drifting 200 ppm; with the modem's network time (a virtual modem
on a pseudo-terminal), the server's signed time, or both, as the only sources.

In every case: the device connects within 60 s, plays each payment sent to it exactly once and a
stale announce never, its acks carry times on the server's clock (so latencies are true, between
0 and the TTL), and the fleet API shows how far its board clock was off.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.conftest import eventually
from tests.integration.device_time_kit import (
    CLOCKS,
    LIBFAKETIME,
    TTL_S,
    Device,
    Fleet,
    needs_faketime,
    register_fleet,
    time_fleet,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration, needs_faketime]

# How close the device's own correction must come to the truth, by source: the modem's clock
# has whole seconds; the server's answer is timed by its round trip on this machine.
TOLERANCE_S = {"modem": 2.5, "server": 1.5, "modem+server": 2.5}
CONNECT_WITHIN_S = 60.0


async def _run_cases(fleet: Fleet, sources: str, unique: str) -> None:
    modem, server_time = "modem" in sources, "server" in sources
    names = {case: f"TM{unique}{i}" for i, case in enumerate(CLOCKS)}
    await register_fleet(fleet, list(names.values()), [f"M{d}" for d in names.values()])
    async with fleet.hearing_acks():
        devices = [await fleet.add_device(d, case, modem=modem, server_time=server_time) for case, d in names.items()]
        for device in devices:
            await eventually(
                lambda d=device: fleet.online(d.device_id),
                timeout_s=CONNECT_WITHIN_S + 30,
                what=f"{device.case} ({sources}) online",
            )
            waited = time.monotonic() - device.started_at
            device.measured["connect_s"] = round(waited, 1)
            # Started one after another; each is held to its own start.
            assert waited < CONNECT_WITHIN_S, f"{device.case}: connected {waited:.0f} s after start"
            await fleet.bind(device.device_id, f"M{device.device_id}")
        payments = {d.device_id: [await fleet.pay(f"M{d.device_id}") for _ in range(3)] for d in devices}
        for device in devices:
            await fleet.publish_stale(device.device_id, f"STALE{device.device_id}")
        for device in devices:
            await eventually(
                lambda d=device: _all_played(fleet, d, payments[d.device_id]),
                timeout_s=30,
                what=f"{device.case} ({sources}) played its payments",
            )
        await asyncio.sleep(1.5)  # anything played twice or late would show by now
        for device in devices:
            await _check(fleet, device, payments[device.device_id], sources)
        await _check_findings(fleet, devices)


async def _check_findings(fleet: Fleet, devices: list[Device]) -> None:
    """The inspector (its SQL path): a board clock off by more than the broker's 10 minutes,
    which the agent corrects, is a clock task and not a fault; a smaller one is nothing."""
    assert fleet.server.inspector is not None
    report = await fleet.server.inspector.run_once(datetime.now(tz=UTC))
    found = {(f.device_id, f.kind.value) for f in report.findings}
    for device in devices:
        big = abs(device.expected_off_s()) > 600
        assert ((device.device_id, "clock") in found) == big, f"{device.case}: {sorted(found)}"
        assert (device.device_id, "faulty") not in found, f"{device.case}: corrected, yet faulty"


async def _all_played(fleet: Fleet, device: Device, payment_ids: list[str]) -> bool:
    return all(fleet.played(device).get(p, 0) >= 1 for p in payment_ids)


async def _check(fleet: Fleet, device: Device, payment_ids: list[str], sources: str) -> None:
    what = f"{device.case} ({sources})"
    played = fleet.played(device)
    assert {p: played.get(p, 0) for p in payment_ids} == dict.fromkeys(payment_ids, 1), f"{what}: each played once"
    assert played.get(f"STALE{device.device_id}", 0) == 0, f"{what}: a stale announce is not played late"
    stale_id = f"STALE{device.device_id}"
    await eventually(lambda: _answered(fleet, stale_id), timeout_s=15, what=f"{what}: the stale announce answered")
    stale_acks = [a for a in fleet.acks if a["payment_id"] == stale_id]
    assert all(a["status"] == "expired" for a in stale_acks), f"{what}: stale acked expired"
    for payment_id in payment_ids:
        payment = await fleet.payment(payment_id)
        received = datetime.fromisoformat(payment["received_at"]).timestamp()
        (delivery,) = payment["deliveries"]
        assert delivery["status"] == "played", f"{what}: {delivery}"
        latency_s = datetime.fromisoformat(delivery["play_started_at"]).timestamp() - received
        device.measured.setdefault("latency_ms", []).append(round(latency_s * 1000, 1))
        assert 0 <= latency_s <= TTL_S, f"{what}: recorded latency {latency_s:.3f} s"
        # The device's own account, before the server bounds it: on the server's clock.
        (ack,) = [a for a in fleet.acks if a["payment_id"] == payment_id and a["status"] == "played"]
        device_latency_s = ack["play_started_at"] / 1000 - received
        device.measured.setdefault("device_latency_ms", []).append(round(device_latency_s * 1000, 1))
        assert -TOLERANCE_S[sources] <= device_latency_s <= TTL_S, f"{what}: device says {device_latency_s:.3f} s"
        assert ack["play_started_at"] <= ack["_arrived_ms"] + TOLERANCE_S[sources] * 1000, (
            f"{what}: ack from the future"
        )
    clock = (await fleet.device(device.device_id))["clock"]
    assert clock is not None, f"{what}: the fleet shows no clock"
    board_off_s = -clock["board_offset_ms"] / 1000
    assert abs(board_off_s - device.expected_off_s()) <= TOLERANCE_S[sources] + 1, f"{what}: fleet shows {clock}"
    assert clock["source"] in sources.split("+"), f"{what}: corrected from {clock['source']}"
    assert abs(clock["skew_ms"]) < 5_000, f"{what}: reports still skewed on arrival: {clock}"
    device.measured.update(
        sources=sources,
        played={p: played.get(p, 0) for p in payment_ids},
        stale_played=played.get(f"STALE{device.device_id}", 0),
        stale_acks=[a["status"] for a in stale_acks],
        fleet_board_off_s=board_off_s,
        fleet_source=clock["source"],
        fleet_skew_ms=clock["skew_ms"],
    )
    fleet.report(device)


@pytest.mark.parametrize("sources", ["modem+server", "modem", "server"])
async def test_every_wrong_clock_announces_every_payment_once_and_never_late(
    tmp_path, embedded_database, server_keys, backend_key, unique, sources
):
    async with time_fleet(tmp_path, embedded_database, server_keys, backend_key, unique) as fleet:
        await _run_cases(fleet, sources, unique)
        fleet.procs.check_alive()


async def test_over_tls_a_board_at_1970_or_15_minutes_fast_connects_on_the_servers_signed_time(
    tmp_path, embedded_database, server_keys, backend_key, unique
):
    """MQTT over TLS and the time over HTTPS: the certificates' dates are judged on the corrected
    clock, so a board at 1970 (where every certificate is "not yet valid") still connects."""
    async with time_fleet(tmp_path, embedded_database, server_keys, backend_key, unique, tls=True) as fleet:
        cases = {"1970": f"TT{unique}0", "15 min fast": f"TT{unique}1"}
        await register_fleet(fleet, list(cases.values()), [f"M{d}" for d in cases.values()])
        async with fleet.hearing_acks():
            devices = [await fleet.add_device(d, case, modem=False, server_time=True) for case, d in cases.items()]
            for device in devices:
                await eventually(lambda d=device: fleet.online(d.device_id), timeout_s=CONNECT_WITHIN_S, what="online")
                await fleet.bind(device.device_id, f"M{device.device_id}")
            payments = {d.device_id: [await fleet.pay(f"M{d.device_id}")] for d in devices}
            for device in devices:
                await fleet.publish_stale(device.device_id, f"STALE{device.device_id}")
                await eventually(
                    lambda d=device: _all_played(fleet, d, payments[d.device_id]), timeout_s=30, what="played"
                )
            for device in devices:
                await _check(fleet, device, payments[device.device_id], "server")


async def test_with_the_brokers_allowance_raised_to_a_day_and_no_time_source_the_fleet_names_the_clock(
    tmp_path, embedded_database, server_keys, backend_key, unique
):
    """The broker takes passwords a day off, and the devices have no time source at all. The one
    15 min slow is moved forward by the first signed message and plays, with a true latency; the
    one 15 min fast cannot know (nothing signed is ever from its future): it acks every announce
    expired, and the fleet sees its reports arrive 900 s fast and makes it a clock fault."""
    async with time_fleet(tmp_path, embedded_database, server_keys, backend_key, unique, max_skew_s=86_400) as fleet:
        slow, fast = f"TS{unique}0", f"TS{unique}1"
        await register_fleet(fleet, [slow, fast], [f"M{slow}", f"M{fast}"])
        async with fleet.hearing_acks():
            devices = {
                d: await fleet.add_device(d, case, modem=False, server_time=False)
                for d, case in ((slow, "15 min slow"), (fast, "15 min fast"))
            }
            for device_id in devices:
                await eventually(lambda d=device_id: fleet.online(d), timeout_s=CONNECT_WITHIN_S, what="online")
                await fleet.bind(device_id, f"M{device_id}")
            paid = {d: await fleet.pay(f"M{d}") for d in devices}
            await eventually(lambda: _all_played(fleet, devices[slow], [paid[slow]]), timeout_s=30, what="slow played")
            await eventually(lambda: _acked(fleet, paid[fast], "expired"), timeout_s=30, what="fast acked expired")
            assert fleet.played(devices[fast]) == {}

            async def recorded() -> bool:  # the device played it; its ack reaches the bridge a moment later
                (delivery,) = (await fleet.payment(paid[slow]))["deliveries"]
                return delivery["play_started_at"] is not None

            await eventually(recorded, timeout_s=30, what="the slow device's play recorded")
            payment = await fleet.payment(paid[slow])
            received = datetime.fromisoformat(payment["received_at"]).timestamp()
            (delivery,) = payment["deliveries"]
            latency_s = datetime.fromisoformat(delivery["play_started_at"]).timestamp() - received
            assert 0 <= latency_s <= TTL_S, latency_s
            assert fleet.server.inspector is not None
            report = await fleet.server.inspector.run_once(datetime.now(tz=UTC))
            faults = {f.device_id: f for f in report.findings if f.kind.value == "faulty"}
            assert set(faults) == {fast}, report.findings
            assert faults[fast].evidence["clock_off_s"] == pytest.approx(900, abs=5)
            assert "时钟" in faults[fast].action_zh


async def _answered(fleet: Fleet, payment_id: str) -> bool:
    return any(a["payment_id"] == payment_id for a in fleet.acks)


async def _acked(fleet: Fleet, payment_id: str, status: str) -> bool:
    return any(a["payment_id"] == payment_id and a["status"] == status for a in fleet.acks)


async def test_a_device_refused_for_its_clock_says_so_and_connects_once_the_network_gives_the_time(
    tmp_path, embedded_database, server_keys, backend_key, unique
):
    """15 min fast with the modem as the only source, and the modem not registered at first:
    the broker refuses the password; the agent's log names the clock, not the SIM; the fleet
    records the refusal's skew; once the network gives the time, it connects by itself."""
    device_id = f"TR{unique}"
    async with time_fleet(tmp_path, embedded_database, server_keys, backend_key, unique) as fleet:
        await register_fleet(fleet, [device_id], [f"M{device_id}"])
        device = await fleet.add_device(device_id, "15 min fast", modem=True, server_time=False, registered=False)
        log = tmp_path / f"{device_id}.0.log"
        await eventually(lambda: _logged(log, "no time source answered"), timeout_s=30, what="the refusal explained")
        assert not await fleet.online(device_id)
        assert device.modem is not None
        device.modem.set_registered(True)
        registered_at = time.monotonic()
        await eventually(lambda: fleet.online(device_id), timeout_s=CONNECT_WITHIN_S, what="online once registered")
        assert time.monotonic() - registered_at < CONNECT_WITHIN_S
        text = log.read_text(encoding="utf-8")
        assert re.search(r"clock (was )?off by \+(899|900|901) s", text), text[-3000:]
        # Reports kept from before the correction arrive first; then the corrected ones.
        await eventually(lambda: _corrected(fleet, device_id), timeout_s=20, what="a corrected report")
        clock = (await fleet.device(device_id))["clock"]
        assert clock["refused_skew_s"] is not None
        assert abs(clock["refused_skew_s"] - 900) <= 2, clock
        assert abs(-clock["board_offset_ms"] / 1000 - 900) <= TOLERANCE_S["modem"] + 1, clock


async def _corrected(fleet: Fleet, device_id: str) -> bool:
    clock = (await fleet.device(device_id))["clock"]
    return clock is not None and clock["source"] == "modem"


async def _logged(log: Any, text: str) -> bool:
    return log.exists() and text in log.read_text(encoding="utf-8")


async def test_diagnose_on_a_device_15_minutes_off_names_the_clock_and_the_fix(
    tmp_path, embedded_database, server_keys, backend_key, unique
):
    device_id = f"TD{unique}"
    async with time_fleet(tmp_path, embedded_database, server_keys, backend_key, unique) as fleet:
        await register_fleet(fleet, [device_id], [f"M{device_id}"])
        await fleet.add_device(device_id, "15 min slow", modem=False, server_time=True)
        await eventually(lambda: fleet.online(device_id), timeout_s=CONNECT_WITHIN_S, what="online")
        await eventually(
            lambda: _file(tmp_path / device_id / "state" / "status.json"), timeout_s=20, what="status written"
        )
        env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "-15m", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        for lang, words in (("zh", ("时钟", "慢了 900 秒")), ("en", ("clock", "900 s slow"))):
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "haodian.cli",
                    "agent",
                    "diagnose",
                    "--config",
                    str(tmp_path / device_id / "agent.toml"),
                    "--lang",
                    lang,
                    "--json",
                ],
                env={**__import__("os").environ, **env},
                capture_output=True,
                timeout=60,
                check=False,
            )
            report = json.loads(done.stdout)
            failing = [c for c in report["checks"] if c["status"] == "fail"]
            assert [c["key"] for c in failing] == ["clock"], report
            assert done.returncode == 1
            (clock,) = failing
            assert words[0] in clock["title"], clock
            assert words[1] in clock["detail"], clock
            assert clock["hint"], clock


async def _file(path: Any) -> bool:
    return path.exists()
