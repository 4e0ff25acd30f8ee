"""OTA that updates the software that runs, campaign after campaign (issue 29).

Six real `haodian agent run` launchers, each running its agent (`python -m edge_agent`) from the
slot its boot control chose, on the embedded broker with access control, the fleet server and
the bridge in this process. Releases are agent builds of this checkout (`haodian ota build`'s
code), some changed on purpose:

1. 1.1.0, good, and it says so: its hello carries a capability the installed code does not
   have. Three devices are killed with kill -9 (launcher and agent, as a power cut) while
   downloading, while installing and in the trial boot; each is started again and no one else
   touches anything. Every device commits and then runs the build (its hello names the build).
2. 1.2.0 raises at import; 1.2.1 lost the voice clip for 元 (its announce path cannot say an
   amount). Each rolls back on every device that tried it, the lane pauses after the first
   wave, and those devices announce payments on 1.1.0. Aborted, the success rate leaves the
   never-offered devices out.
3. 1.3.0 and 1.4.0, good: both commit on every device, with two devices restarted before 1.3.0
   and none before 1.4.0: three campaigns in a row commit.

`HAODIAN_OTA_REPORT=FILE` writes the final table (device, version, slot, boot state) as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.ota.builds import PACKAGES, build_agent
from edge_agent.state_files import read_json
from firmware_protocols.signing import encode_public_key
from mqtt_link.tasks import cancel_and_wait
from tests.integration.conftest import eventually
from tests.integration.device_time_kit import Device, Fleet, register_fleet, time_fleet
from tests.integration.test_ota import manifest_json

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CHECKOUT = Path(__file__).resolve().parents[2]
DEVICES = 6
FACTORY = "1.0.0"
RELEASE_KEY = Ed25519PrivateKey.generate()  # made for this run: test-only
CAMPAIGN_WITHIN_S = 180.0  # a bound for a whole campaign on a loaded 2-core machine, not a speed claim


# -- builds -------------------------------------------------------------------------------------


def build(folder: Path, version: str, change: Callable[[Path], None] | None = None) -> tuple[bytes, str]:
    """A build of this checkout as `version`, after `change` edits a copy of its sources."""
    source = folder / f"src-{version}"
    for package in PACKAGES:
        shutil.copytree(CHECKOUT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    if change is not None:
        change(source)
    out = folder / f"agent-{version}.zip"
    manifest = build_agent(source, version, out)
    return out.read_bytes(), manifest.build_id


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{path}: {old!r} not found (the test's change no longer applies)"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def reports_probe(tag: str) -> Callable[[Path], None]:
    """A build whose hello names one more capability: proof that the new code runs."""
    return lambda source: _edit(
        source / "edge_agent" / "agent.py", '    "ota.v1",\n', f'    "ota.v1",\n    "probe.{tag}",\n'
    )


def raises_at_import(source: Path) -> None:
    _edit(
        source / "edge_agent" / "agent.py",
        "from __future__ import annotations\n",
        'from __future__ import annotations\n\nraise RuntimeError("broken build: the agent raises at import")\n',
    )


def loses_the_yuan_clip(source: Path) -> None:
    manifest = source / "edge_agent" / "voices" / "zh_cn" / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    del data["clips"]["元"]
    manifest.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# -- the fleet around them ---------------------------------------------------------------------


class Rollout:
    def __init__(self, fleet: Fleet, devices: list[Device]) -> None:
        self.fleet = fleet
        self.devices = devices
        self.hellos: dict[str, dict[str, Any]] = {}
        self.kills: list[dict[str, Any]] = []
        self.outcomes: dict[str, list[str]] = {}  # device → "version: state[/failure]" per campaign

    async def release(self, version: str, data: bytes) -> None:
        body = manifest_json(RELEASE_KEY, version, data)
        async with await self.fleet._api() as admin:
            made = await admin.post("/api/v1/ota/releases", json=body)
            assert made.status_code == 201, made.text
            put = await admin.put(f"/api/v1/ota/releases/haodian-speaker/{version}/artifact", content=data)
            assert put.status_code == 200, put.text

    async def campaign(self, version: str, **policy: Any) -> str:
        body = {
            "release_name": "haodian-speaker",
            "version": version,
            "campaign_id": f"c-{version}-{os.getpid()}",
            "target": {"devices": [d.device_id for d in self.devices]},
            "policy": {"window": None, "max_rate_bps": 1024 * 1024, "waves": [1.0], **policy},
        }
        async with await self.fleet._api() as admin:
            made = await admin.post("/api/v1/ota/campaigns", json=body)
            assert made.status_code == 201, made.text
            return str(made.json()["campaign_id"])

    async def progress(self, campaign_id: str) -> dict[str, Any]:
        return await self.fleet._get(f"/api/v1/ota/campaigns/{campaign_id}")

    async def act(self, campaign_id: str, action: str) -> dict[str, Any]:
        async with await self.fleet._api() as admin:
            done = await admin.post(f"/api/v1/ota/campaigns/{campaign_id}/{action}")
            assert done.status_code == 200, done.text
            return dict(done.json())

    async def targets(self, campaign_id: str) -> dict[str, dict[str, Any]]:
        async with self.fleet.server.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT device_id, state, failure, reason FROM ota_targets WHERE campaign_id = %s", (campaign_id,)
            )
            return {row[0]: {"state": row[1], "failure": row[2], "reason": row[3]} for row in await cur.fetchall()}

    async def note_outcomes(self, campaign_id: str, version: str) -> None:
        for device_id, target in (await self.targets(campaign_id)).items():
            failure = f"/{target['failure']}" if target["failure"] else ""
            self.outcomes.setdefault(device_id, []).append(f"{version}: {target['state']}{failure}")

    async def completed(self, campaign_id: str) -> bool:
        """Every device committed and the conductor closed the campaign."""
        progress = await self.progress(campaign_id)
        return progress["status"] == "completed" and progress["committed"] == len(self.devices)

    async def paused_and_settled(self, campaign_id: str) -> bool:
        progress = await self.progress(campaign_id)
        moving = {s for s in progress["by_state"] if s not in ("pending", "rolled_back", "failed", "committed")}
        return progress["status"] == "paused" and not moving

    @contextlib.asynccontextmanager
    async def hearing_hellos(self) -> AsyncIterator[None]:
        ready = asyncio.Event()

        async def listen() -> None:
            async with self.fleet._server_client("test-hellos") as client:
                await client.subscribe("hd/v1/+/up/hello", qos=1)
                ready.set()
                async for message in client.messages:
                    hello = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    self.hellos[hello["device_id"]] = hello

        listener = asyncio.create_task(listen())
        await ready.wait()
        try:
            yield
        finally:
            await cancel_and_wait(listener)

    # -- the devices' own files --------------------------------------------------------------

    @staticmethod
    def boot_env(device: Device) -> dict[str, Any]:
        return read_json(device.folder / "state" / "bootctl.json") or {}

    @staticmethod
    def job(device: Device) -> dict[str, Any]:
        return read_json(device.folder / "state" / "ota" / "job.json") or {}

    async def kill_when(self, device: Device, step: str, seen: Callable[[], bool]) -> None:
        """kill -9 `device` (its launcher, and with it the agent) the moment `seen()`, as a power
        cut; a second later start it again."""
        deadline = time.monotonic() + CAMPAIGN_WITHIN_S
        while not seen():
            assert time.monotonic() < deadline, f"{device.device_id} never reached {step}"
            await asyncio.sleep(0.01)
        self.fleet.procs.kill(device.device_id)
        self.kills.append({"device": device.device_id, "step": step, "job": self.job(device).get("state")})
        await asyncio.sleep(1.0)
        self.fleet.start(device)

    async def restart(self, device: Device) -> None:
        """Stop `device` cleanly (SIGTERM to the launcher) and start it again."""
        for name, proc, _ in reversed(self.fleet.procs.started):
            if name == device.device_id and proc.poll() is None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 30)
                break
        self.fleet.start(device)

    async def announces(self, device: Device) -> None:
        payment = await self.fleet.pay(f"M{device.device_id}")
        try:
            await eventually(
                lambda: _played_once(self.fleet, device, payment), timeout_s=30, what=f"{device.device_id} announces"
            )
        except pytest.fail.Exception:  # say where it stopped: the server's view, the device's job and boot
            seen = {
                "payment": await self.fleet.payment(payment),
                "online": await self.fleet.online(device.device_id),
                "job": self.job(device),
                "boot": self.boot_env(device),
                "played": self.fleet.played(device),
            }
            pytest.fail(f"{device.device_id} did not announce {payment} once: {seen}")


async def _played_once(fleet: Fleet, device: Device, payment: str) -> bool:
    return fleet.played(device).get(payment, 0) == 1


async def _all_online(fleet: Fleet, devices: list[Device]) -> bool:
    return all([await fleet.online(d.device_id) for d in devices])


# -- the test -----------------------------------------------------------------------------------


async def test_updates_run_the_new_code_roll_back_bad_builds_and_survive_power_cuts(  # noqa: PLR0915 - one story
    tmp_path, embedded_database, server_keys, backend_key, unique
):
    release_pub = encode_public_key(RELEASE_KEY.public_key())
    good_110, id_110 = build(tmp_path, "1.1.0", reports_probe("v110"))
    import_120, _ = build(tmp_path, "1.2.0", raises_at_import)
    voice_121, _ = build(tmp_path, "1.2.1", loses_the_yuan_clip)
    good_130, id_130 = build(tmp_path, "1.3.0", reports_probe("v130"))
    good_140, id_140 = build(tmp_path, "1.4.0")
    async with time_fleet(
        tmp_path, embedded_database, server_keys, backend_key, unique, ota_release_keys=[release_pub], ota_round_s=1.0
    ) as fleet:
        ids = [f"OA{unique}{i}" for i in range(DEVICES)]
        await register_fleet(fleet, ids, [f"M{d}" for d in ids])
        config = {
            "firmware": FACTORY,
            "release_keys": [release_pub],
            "time_sources": ["server"],
            "ota_retry_initial_s": 0.5,
            "ota_health_timeout_s": 30.0,
            "ota_trial_deadline_s": 120.0,
            "ota_install_rate_bps": 400_000,  # a slow flash: an install takes a few seconds
        }
        devices = [await fleet.add_device(d, None, modem=False, server_time=True, config=config) for d in ids]
        rollout = Rollout(fleet, devices)
        async with rollout.hearing_hellos():
            await eventually(lambda: _all_online(fleet, devices), timeout_s=90, what="every device online")
            for device in devices:
                await fleet.bind(device.device_id, f"M{device.device_id}")
                assert rollout.hellos[device.device_id].get("build") is None  # the installed package runs
            await rollout.announces(devices[0])

            # 1. A good build, with power cuts in download, install and trial boot.
            await rollout.release("1.1.0", good_110)
            first = await rollout.campaign("1.1.0", max_rate_bps=128 * 1024)  # ~5 s of download each
            one, two, three = devices[:3]
            part = one.folder / "state" / "ota" / "artifact.part"
            await asyncio.gather(
                rollout.kill_when(
                    one,
                    "download",
                    lambda: (
                        rollout.job(one).get("state") == "downloading"
                        and part.exists()
                        and part.stat().st_size > 150_000
                    ),
                ),
                rollout.kill_when(
                    two,
                    "install",
                    lambda: (
                        rollout.job(two).get("state") == "installing"
                        and (two.folder / "state" / "slots" / "b" / "app").exists()
                    ),
                ),
                rollout.kill_when(
                    three,
                    "trial boot",
                    lambda: (env := rollout.boot_env(three)).get("trial_boot") == "b" and env.get("active") == "a",
                ),
            )
            await eventually(lambda: rollout.completed(first), timeout_s=CAMPAIGN_WITHIN_S, what="1.1.0 committed")
            done = await rollout.progress(first)
            await rollout.note_outcomes(first, "1.1.0")
            assert (done["status"], done["success_rate"], done["failures"]) == ("completed", 1.0, {}), done
            assert done["interrupted"] >= 1, done  # the trial boot cut by kill -9 was booted again
            steps = {k["step"]: k["job"] for k in rollout.kills}
            assert (steps["download"], steps["install"]) == ("downloading", "installing"), rollout.kills
            assert steps["trial boot"] in ("rebooting", "health_check"), rollout.kills
            await eventually(
                lambda: _hellos_say(rollout, "1.1.0", id_110), timeout_s=30, what="every device says hello as 1.1.0"
            )
            for device in devices:
                hello = rollout.hellos[device.device_id]
                assert "probe.v110" in hello["capabilities"], hello
                assert (rollout.boot_env(device)["active"], hello["slot"]) == ("b", "b")

            # 2. Bad builds roll back where they were tried, pause the lane, and the devices announce.
            for version, data, failure, why in (
                ("1.2.0", import_120, "boot", "broken build"),
                ("1.2.1", voice_121, "health_check", "audio self-test"),
            ):
                await rollout.release(version, data)
                bad = await rollout.campaign(version, waves=[0.34, 1.0], pause_min_devices=1, pause_failure_rate=0.1)
                await eventually(
                    lambda bad=bad: rollout.paused_and_settled(bad),
                    timeout_s=CAMPAIGN_WITHIN_S,
                    what=f"{version} paused",
                )
                targets = await rollout.targets(bad)
                tried = [d for d in devices if targets[d.device_id]["state"] != "pending"]
                assert 1 <= len(tried) <= 3, targets  # the first wave only: the lane paused early
                for device in tried:
                    target = targets[device.device_id]
                    assert (target["state"], target["failure"]) == ("rolled_back", failure), target
                    assert why in (target["reason"] or ""), target
                    env = rollout.boot_env(device)
                    assert (env["active"], env["slots"]["b"]["version"], env["slots"]["a"]["state"]) == (
                        "b",
                        "1.1.0",
                        "bad",
                    )
                    await rollout.announces(device)
                await rollout.note_outcomes(bad, version)
                aborted = await rollout.act(bad, "abort")
                assert aborted["not_offered"] == DEVICES - len(tried), aborted
                assert aborted["success_rate"] == 0.0, aborted  # of those tried, not of the six
            for device in devices:
                await rollout.announces(device)

            # 3. Three campaigns in a row commit: 1.1.0 above, 1.3.0 after two restarts, 1.4.0 at once.
            for device in devices[3:5]:
                await rollout.restart(device)
            await eventually(lambda: _all_online(fleet, devices), timeout_s=60, what="restarted devices online")
            for version, data, build_id in (("1.3.0", good_130, id_130), ("1.4.0", good_140, id_140)):
                await rollout.release(version, data)
                campaign = await rollout.campaign(version)
                await eventually(
                    lambda c=campaign: rollout.completed(c),
                    timeout_s=CAMPAIGN_WITHIN_S,
                    what=f"{version} committed",
                )
                await eventually(
                    lambda v=version, b=build_id: _hellos_say(rollout, v, b), timeout_s=30, what=f"hellos of {version}"
                )
                await rollout.note_outcomes(campaign, version)
            table = []
            for device in devices:
                env = rollout.boot_env(device)
                table.append(
                    {
                        "device": device.device_id,
                        "version": env["slots"][env["active"]]["version"],
                        "slot": env["active"],
                        "state": env["slots"][env["active"]]["state"],
                        "other": f"{env['slots'][('a', 'b')[env['active'] == 'a']].get('version')} "
                        f"({env['slots'][('a', 'b')[env['active'] == 'a']].get('state')})",
                        "build": rollout.hellos[device.device_id].get("build"),
                        "killed": next((k["step"] for k in rollout.kills if k["device"] == device.device_id), None),
                        "campaigns": rollout.outcomes[device.device_id],
                    }
                )
                # 1.1.0 went to b, the bad builds to a (dropped), 1.3.0 to a, 1.4.0 to b.
                assert (env["active"], table[-1]["version"], table[-1]["state"]) == ("b", "1.4.0", "good"), env
                await rollout.announces(device)
            if report := os.environ.get("HAODIAN_OTA_REPORT"):
                await asyncio.to_thread(Path(report).write_text, json.dumps(table, ensure_ascii=False, indent=1))
        fleet.procs.check_alive()


async def _hellos_say(rollout: Rollout, version: str, build_id: str) -> bool:
    return all(
        (h := rollout.hellos.get(d.device_id)) is not None and h["firmware"] == version and h.get("build") == build_id
        for d in rollout.devices
    )
