"""The fault suite: each case breaks one part of the running system the way the field does
(kill -9, a dead or slow 4G link, a full disk), then checks that nothing was lost, nothing was
played twice, and the figures agree (`Rig.check`). Each case says what it proves.

Every part is a real process: PostgreSQL, Mosquitto, the fleet server, the bridge, two agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time

import pytest

from tests.faults.rig import DIRECT, PROXIED, Rig

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def until_some_played(rig: Rig, device: str, count: int) -> None:
    from tests.integration.resilience_kit import plays  # noqa: PLC0415

    async def enough() -> bool:
        return sum(plays(rig.audio(device)).values()) >= count

    await rig.until(enough, f"{count} plays on {device}")


async def test_broker_killed_and_restarted_mid_stream(rig: Rig) -> None:
    """Proves: a broker crash loses no payment and plays none twice. Announces published while
    it is down are republished by the bridge's retry, and what the broker had queued survives
    in its persistence."""
    stream = asyncio.create_task(rig.pay(30))
    await until_some_played(rig, DIRECT, 5)
    rig.broker.kill()
    await asyncio.sleep(2)
    await asyncio.to_thread(rig.broker.start)
    await stream
    await rig.check()


async def test_database_killed_and_restarted_mid_stream(rig: Rig) -> None:
    """Proves: with the database gone the bridge answers no notification with 200 (so the
    backend keeps it and retries: nothing acknowledged is unrecorded), and after the database
    restarts every payment is recorded and announced once."""
    stream = asyncio.create_task(rig.pay(30))

    async def some_answered() -> bool:
        return sum(s.answered for s in rig.sent) >= 5

    # Killed once a few are recorded, while most are still to be sent (6 s of them): waiting for
    # plays instead let a slow machine answer all 30 before the kill, and nothing met the outage.
    await rig.until(some_answered, "5 notifications answered")
    rig.pg.kill()
    down_at = time.monotonic()
    await asyncio.sleep(3)
    restart_at = time.monotonic()
    await asyncio.to_thread(rig.pg.start)
    await stream
    counts = await rig.check()
    tries = [t for s in rig.sent for t in s.tries]
    # The outage was met: attempts were made while the database was dead. Whether the bridge
    # refused them or held them until the database was back depends on timing; either is sound.
    assert any(down_at <= began < restart_at for began, _, _ in tries), "no notification met the outage"
    # What is sound is never a 200 to an attempt made while the database is dead (the bridge keeps
    # nothing in memory to answer from): that would acknowledge a payment nothing recorded.
    acknowledged_while_down = [t for t in tries if 200 <= t[2] < 300 and down_at <= t[0] and t[1] < restart_at]
    assert not acknowledged_while_down, acknowledged_while_down
    assert (counts["payments"], counts["refunds"]) == (30, 7)  # every fourth payment partly refunded


async def test_bridge_killed_and_restarted_mid_stream(rig: Rig) -> None:
    """Proves: a bridge crash between recording a payment and publishing (or mid-publish) loses
    nothing: the restarted bridge republishes what is pending, the backend's retries of what
    went unanswered are recognised as duplicates, and each device plays each payment once."""
    stream = asyncio.create_task(rig.pay(30))
    await until_some_played(rig, DIRECT, 5)
    rig.kill("bridge")
    await asyncio.sleep(1)
    rig.start_server("bridge")
    await rig.wait_http(rig.bridge_port)
    await stream
    await rig.check()


async def test_fleet_server_killed_and_restarted_loses_no_health(rig: Rig) -> None:
    """Proves: the fleet server's crash stops no announcement (the bridge does not need it), and
    the health reports sent while it was down wait in its persistent broker session and are all
    stored after the restart: no gap in any device's health beyond its reporting interval."""
    since = time.time()
    stream = asyncio.create_task(rig.pay(15))
    await asyncio.sleep(2)
    rig.kill("fleet")
    await asyncio.sleep(5)
    rig.start_server("fleet")
    await rig.wait_http(rig.fleet_port)
    await stream
    await rig.check()
    await asyncio.sleep(3)  # the ingest drains what the broker kept
    for device in (DIRECT, PROXIED):
        # Reports every 1 s; a stored gap of 5 s would be the outage lost.
        assert await rig.health_gaps(device, since) < 2.5


async def test_agent_killed_mid_announcement_and_restarted(rig: Rig) -> None:
    """Proves: an agent killed while announcing plays every payment at most once after its
    restart (its dedup record is on disk before the speaker starts), and the bridge's
    retries bring the rest; a payment whose speech was cut off as the process died is not
    repeated, and is recorded as played (the merchant heard its start)."""
    stream = asyncio.create_task(rig.pay(30, rate_per_s=10))
    await until_some_played(rig, PROXIED, 5)
    rig.kill(PROXIED)
    await asyncio.sleep(1)
    rig.start_agent(PROXIED, via_proxy=True)
    await stream
    await rig.check()


async def test_network_cut_delayed_and_reset_between_agent_and_broker(rig: Rig) -> None:
    """Proves: over a 4G link that goes silent for 10 s (a black hole: neither side is told),
    then turns slow (300 ms each way), then resets every connection, the agent behind it plays
    every payment once, late but within the time-to-live, and its twin on a good link is not
    held back."""
    stream = asyncio.create_task(rig.pay(40, rate_per_s=4))
    await until_some_played(rig, PROXIED, 3)
    rig.proxy.cut()
    await asyncio.sleep(10)
    rig.proxy.restore()
    rig.proxy.delay_s = 0.3
    await asyncio.sleep(3)
    rig.proxy.reset()
    await asyncio.sleep(1)
    rig.proxy.delay_s = 0.0
    await stream
    await rig.check()


async def test_agent_disk_full_mid_stream(rig: Rig, tmp_path) -> None:
    """Proves: an agent whose storage fills up while it runs keeps announcing every payment
    exactly once (its dedup window also lives in memory), stays up, and recovers when space
    comes back; nothing is lost on the server side."""
    state = tmp_path / "small-disk"
    state.mkdir()
    mounted = await _run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.decode().strip()}")
    try:
        rig.kill(PROXIED)
        rig.start_agent(PROXIED, via_proxy=True, state_dir=state / "agent")
        # The new agent's own boot record (written after its databases are open), not the
        # killed one's session, which the fleet may still show online for a moment.
        await rig.until(lambda: _true((state / "agent" / "boot.json").exists()), f"{PROXIED} started on the small disk")
        await rig.until(lambda: rig.online(PROXIED), f"{PROXIED} online again")
        await rig.pay(5)
        filler = state / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:  # until the disk is full
                out.write(b"\0" * 65536)
        await rig.pay(15)
        filler.unlink()
        await rig.pay(5)
        await rig.check()
    finally:
        rig.kill(PROXIED)
        await _run("umount", "-l", str(state))


async def _run(*command: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, check=False)


async def _true(value: bool) -> bool:
    return value
