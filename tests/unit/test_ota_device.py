"""The device's side of an update: A/B boot control with a boot counter, resumable download, and
the updater's state machine through restarts, power cuts, bad health and refused offers."""

from __future__ import annotations

import asyncio
import hashlib
import random

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.clock import FakeClock
from edge_agent.ota.download import DownloadRefused, download
from edge_agent.ota.slots import MAX_INTERRUPTIONS, BootControl
from edge_agent.ota.updater import UpdatePolicy, Updater
from firmware_protocols.messages import DailySpan, OtaFailure, OtaOffer, OtaState, OtaStatus
from firmware_protocols.ota import ReleaseManifest, sign_manifest
from firmware_protocols.signing import key_id_of

NOW = 1_790_000_000_000  # 2026-09-21 14:13 UTC, 22:13 in Beijing
ARTIFACT = random.Random(3).randbytes(300_000)
SHA = hashlib.sha256(ARTIFACT).hexdigest()

pytestmark = pytest.mark.anyio


# -- boot control -----------------------------------------------------------------------------


def installed(tmp_path, version="1.5.0", tries=1) -> BootControl:
    boot = BootControl(tmp_path, factory_version="1.4.2")
    assert boot.boot().slot == "a"
    folder = boot.begin_install("b")
    (folder / "payload.bin").write_bytes(b"image")
    boot.finish_install("b", version)
    boot.try_next("b", tries=tries)
    return boot


def test_a_trial_slot_that_commits_boots_from_then_on(tmp_path):
    installed(tmp_path)
    first = BootControl(tmp_path, factory_version="1.4.2")
    choice = first.boot()
    assert (choice.slot, choice.version, choice.trial) == ("b", "1.5.0", True)
    first.commit("b")
    again = BootControl(tmp_path, factory_version="1.4.2").boot()
    assert (again.slot, again.version, again.trial, again.rolled_back) == ("b", "1.5.0", False, False)


def test_a_trial_boot_that_crashes_rolls_back_to_the_working_slot(tmp_path):
    installed(tmp_path)
    assert BootControl(tmp_path, factory_version="1.4.2").boot().trial  # the trial boot ...
    BootControl(tmp_path, factory_version="1.4.2").ended("crashed: exit 1: ImportError: no module x")  # ... crashes
    choice = BootControl(tmp_path, factory_version="1.4.2").boot()
    assert (choice.slot, choice.version, choice.rolled_back, choice.dropped_interrupted) == ("a", "1.4.2", True, False)
    assert "ImportError" in (choice.dropped or "")
    control = BootControl(tmp_path, factory_version="1.4.2")
    assert control.bootable() == ["a"]
    assert not control.boot().rolled_back  # and it stays on a


def test_a_reboot_loop_uses_up_the_boot_counter_then_rolls_back(tmp_path):
    installed(tmp_path, tries=3)
    trials = []
    for _ in range(3):
        trials.append(BootControl(tmp_path, factory_version="1.4.2").boot())
        BootControl(tmp_path, factory_version="1.4.2").ended("crashed: signal SIGSEGV: ")
    assert all(c.trial and c.slot == "b" for c in trials)
    fourth = BootControl(tmp_path, factory_version="1.4.2").boot()
    assert (fourth.slot, fourth.rolled_back) == ("a", True)


def test_a_trial_boot_cut_from_outside_is_booted_again_a_bounded_number_of_times(tmp_path):
    """Issue 29: a power cut or kill -9 in the trial boot is not the release's fault. Nothing
    recorded how that boot ended, so the boot control gives the boot back, up to
    MAX_INTERRUPTIONS times; then it drops the trial as interrupted (not as a crash)."""
    installed(tmp_path)
    boots = [BootControl(tmp_path, factory_version="1.4.2").boot() for _ in range(MAX_INTERRUPTIONS + 1)]
    assert [(c.slot, c.trial, c.interrupted) for c in boots] == [("b", True, n) for n in range(MAX_INTERRUPTIONS + 1)]
    dropped = BootControl(tmp_path, factory_version="1.4.2").boot()
    assert (dropped.slot, dropped.rolled_back, dropped.dropped_interrupted) == ("a", True, True)
    assert "cut" in (dropped.dropped or "")


def test_a_trial_cut_once_then_committed_is_the_working_slot(tmp_path):
    installed(tmp_path)
    BootControl(tmp_path, factory_version="1.4.2").boot()  # cut by the power
    control = BootControl(tmp_path, factory_version="1.4.2")
    again = control.boot()
    assert (again.slot, again.trial, again.interrupted) == ("b", True, 1)
    control.commit("b")
    after = BootControl(tmp_path, factory_version="1.4.2").boot()
    assert (after.slot, after.trial, after.rolled_back, after.interrupted) == ("b", False, False, 0)


def test_a_half_written_slot_never_boots_and_the_active_slot_is_never_written(tmp_path):
    boot = BootControl(tmp_path, factory_version="1.4.2")
    boot.boot()
    with pytest.raises(ValueError, match="active slot"):
        boot.begin_install("a")
    boot.begin_install("b")  # the power goes here
    with pytest.raises(ValueError, match="no complete image"):
        boot.try_next("b")
    choice = BootControl(tmp_path, factory_version="1.4.2").boot()
    assert (choice.slot, choice.version, choice.trial) == ("a", "1.4.2", False)


# -- download ---------------------------------------------------------------------------------


def artifact_server(
    *, cut_at: list[int] | None = None, ranges: bool = True, data: bytes = ARTIFACT
) -> httpx.MockTransport:
    """Serves `data` (ARTIFACT) with Range and If-Range like the fleet server; the connection
    drops when it reaches each byte offset of `cut_at` (once each)."""
    cuts = sorted(set(cut_at or []))
    ARTIFACT, SHA = data, hashlib.sha256(data).hexdigest()  # noqa: N806 - the module's names, for one artifact

    def handle(request: httpx.Request) -> httpx.Response:
        start = 0
        header = request.headers.get("range")
        if ranges and header and request.headers.get("if-range") == f'"{SHA}"':
            start = int(header.removeprefix("bytes=").rstrip("-"))
        body = ARTIFACT[start:]
        while cuts and cuts[0] <= start:
            cuts.pop(0)
        if cuts:
            body = ARTIFACT[start : cuts.pop(0)]
        headers = {"etag": f'"{SHA}"', "content-length": str(len(ARTIFACT) - start)}
        if start:
            headers["content-range"] = f"bytes {start}-{len(ARTIFACT) - 1}/{len(ARTIFACT)}"
        return httpx.Response(206 if start else 200, headers=headers, content=body)

    return httpx.MockTransport(handle)


async def fetch(transport, dest, **kw):
    async with httpx.AsyncClient(transport=transport) as client:
        await download(client, "http://fleet/ota/artifacts/x", dest, size=len(ARTIFACT), etag=f'"{SHA}"', **kw)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.sets(st.integers(min_value=1, max_value=len(ARTIFACT) - 1), min_size=1, max_size=3))
def test_a_download_cut_at_any_byte_resumes_to_the_exact_artifact(tmp_path_factory, cuts):
    dest = tmp_path_factory.mktemp("dl") / "artifact.part"
    transport = artifact_server(cut_at=list(cuts))

    async def scenario() -> None:
        for _ in cuts:
            with pytest.raises(httpx.RemoteProtocolError):
                await fetch(transport, dest)
        await fetch(transport, dest)

    asyncio.run(scenario())
    assert dest.read_bytes() == ARTIFACT


async def test_a_server_without_ranges_is_read_from_the_start(tmp_path):
    dest = tmp_path / "artifact.part"
    dest.write_bytes(b"x" * 1000)  # not even a prefix of the artifact
    await fetch(artifact_server(ranges=False), dest)
    assert dest.read_bytes() == ARTIFACT


async def test_a_missing_artifact_is_refused_not_retried(tmp_path):
    transport = httpx.MockTransport(lambda _: httpx.Response(404))
    with pytest.raises(DownloadRefused, match="404"):
        await fetch(transport, tmp_path / "a.part")


async def test_the_throttle_holds_the_rate(tmp_path):
    loop = asyncio.get_running_loop()
    started = loop.time()
    await fetch(artifact_server(), tmp_path / "a.part", max_rate_bps=1_000_000)
    assert loop.time() - started >= len(ARTIFACT) / 1_000_000 * 0.9


# -- the updater ------------------------------------------------------------------------------


class Host:
    """The agent around the updater, as a fake: records reports and restart requests."""

    def __init__(self, problems: list[str] | None = None) -> None:
        self.reports: list[OtaStatus] = []
        self.restarts: list[str] = []
        self.problems = problems or []
        self.restarted = asyncio.Event()

    async def send_ota_status(self, status: OtaStatus) -> None:
        self.reports.append(status)

    def request_restart(self, reason: str) -> None:
        self.restarts.append(reason)
        self.restarted.set()

    async def health_problems(self) -> list[str]:
        return self.problems

    def states(self) -> list[OtaState]:
        """The states reported, each once per change (download progress repeats its state)."""
        states = [r.state for r in self.reports]
        return [s for i, s in enumerate(states) if i == 0 or states[i - 1] is not s]


@pytest.fixture(scope="module")
def release_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()  # made for this run: test-only


def offer_of(
    release_key, *, version="1.5.0", window=None, expires_at=NOW + 86_400_000, key=None, data=ARTIFACT
) -> OtaOffer:
    manifest = sign_manifest(
        ReleaseManifest(
            name="haodian-speaker",
            version=version,
            models=["HD-S1"],
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            issued_at=NOW - 1000,
            expires_at=expires_at,
        ),
        key or release_key,
    )
    return OtaOffer(
        device_id="D1",
        ts=NOW,
        key_id="server",
        issued_at=NOW,
        ttl_s=3600,
        campaign_id="c1",
        manifest=manifest,
        url="http://fleet/ota/artifacts/x",
        window=window,
    )


def updater(tmp_path, release_key, host, *, transport=None, clock=None, **policy) -> Updater:
    """An updater on `tmp_path`'s boot control; `policy` changes its UpdatePolicy (the default
    payload here is an opaque image: ARTIFACT is random bytes)."""
    control = BootControl(tmp_path, factory_version="1.4.2")
    return Updater(
        device_id="D1",
        model="HD-S1",
        state_dir=tmp_path,
        boot_control=control,
        booted=control.boot(),
        release_keys={key_id_of(release_key.public_key()): release_key.public_key()},
        host=host,
        clock=clock or FakeClock(NOW),
        policy=UpdatePolicy(**{"retry_initial_s": 0.01, "window_poll_s": 0.01, "payload": "image", **policy}),
        transport=transport or artifact_server(),
    )


# The states of an update from its offer to the restart into the new slot.
UPDATE_STEPS = [
    OtaState.QUEUED,
    OtaState.DOWNLOADING,
    OtaState.VERIFYING,
    OtaState.WAITING_WINDOW,
    OtaState.INSTALLING,
    OtaState.REBOOTING,
]


async def run_until_restart(u: Updater, host: Host, offer: OtaOffer | None = None) -> None:
    if offer is not None:
        await u.offer(offer)
    else:
        u.start()
    await asyncio.wait_for(host.restarted.wait(), 10)
    await u.close()


async def test_an_update_goes_through_every_step_and_commits_after_the_restart(tmp_path, release_key):
    host = Host()
    u = updater(tmp_path, release_key, host, transport=artifact_server(cut_at=[1234]))
    await run_until_restart(u, host, offer_of(release_key))
    assert host.states() == UPDATE_STEPS
    assert host.restarts == ["ota"]
    after = Host()
    new = updater(tmp_path, release_key, after)  # the restart: the boot control picks the trial slot
    assert new.booted.trial
    assert new.running == "1.5.0"
    new.start()
    await asyncio.wait_for(_until(lambda: after.states()[-1:] == [OtaState.COMMITTED]), 10)
    assert after.states() == [OtaState.HEALTH_CHECK, OtaState.COMMITTED]
    assert (tmp_path / "slots" / "b" / "payload.bin").read_bytes() == ARTIFACT
    assert BootControl(tmp_path, factory_version="1.4.2").boot().slot == "b"


async def test_the_next_campaign_after_a_commit_downloads_without_a_restart_between(tmp_path, release_key):
    """Issue 29: a device that committed 1.5.0 and has not restarted since takes the 1.6.0 offer
    as a new update (it used to answer rolled_back/boot at once: the updater still thought it ran
    a trial slot)."""
    host = Host()
    await run_until_restart(updater(tmp_path, release_key, host), host, offer_of(release_key))
    after = Host()
    running = updater(tmp_path, release_key, after)
    running.start()
    await asyncio.wait_for(_until(lambda: after.states()[-1:] == [OtaState.COMMITTED]), 10)
    assert not running.booted.trial
    following = offer_of(release_key, version="1.6.0").model_copy(update={"campaign_id": "c2"})
    await running.offer(following)
    await asyncio.wait_for(after.restarted.wait(), 10)
    await running.close()
    assert after.states()[2:] == UPDATE_STEPS
    assert after.restarts == ["ota"]


async def test_a_download_cut_then_a_restart_resumes_where_it_was_cut(tmp_path, release_key):
    asked: list[str | None] = []
    served = artifact_server(cut_at=[123_457])

    async def recording(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("range"))
        return await served.handle_async_request(request)

    transport = httpx.MockTransport(recording)
    host = Host()
    first = updater(tmp_path, release_key, host, transport=transport)
    first.policy = UpdatePolicy(retry_initial_s=60, payload="image")  # the retry would come a minute later ...
    await first.offer(offer_of(release_key))
    await asyncio.wait_for(_until(lambda: len(asked) == 1), 10)
    await asyncio.sleep(0.05)
    await first.close()  # ... but the device restarts first
    assert (tmp_path / "ota" / "artifact.part").stat().st_size == 123_457
    again = Host()
    await run_until_restart(updater(tmp_path, release_key, again, transport=transport), again)
    assert asked == ["bytes=0-", "bytes=123457-"]
    assert again.states()[:2] == [OtaState.DOWNLOADING, OtaState.VERIFYING]


async def test_a_failed_health_check_rolls_back_to_the_old_slot(tmp_path, release_key):
    host = Host()
    await run_until_restart(updater(tmp_path, release_key, host), host, offer_of(release_key))
    sick = Host(problems=["audio self-test: amplifier dead"])
    trial = updater(tmp_path, release_key, sick)
    trial.start()
    await asyncio.wait_for(sick.restarted.wait(), 10)
    last = sick.reports[-1]
    assert (last.state, last.failure, sick.restarts) == (OtaState.ROLLED_BACK, OtaFailure.HEALTH_CHECK, ["rollback"])
    assert "amplifier" in (last.reason or "")
    back = updater(tmp_path, release_key, Host())
    assert (back.booted.slot, back.running) == ("a", "1.4.2")


async def test_a_crash_during_the_trial_is_a_rollback_by_the_boot_counter(tmp_path, release_key):
    host = Host()
    await run_until_restart(updater(tmp_path, release_key, host), host, offer_of(release_key))
    updater(tmp_path, release_key, Host())  # the trial boot: it dies before its health check ends ...
    BootControl(tmp_path, factory_version="1.4.2").ended("crashed: exit 1: RuntimeError: broken build")  # ... seen
    after = Host()
    back = updater(tmp_path, release_key, after)
    assert back.booted.rolled_back
    assert back.running == "1.4.2"
    back.start()
    await asyncio.wait_for(_until(lambda: bool(after.reports)), 10)
    last = after.reports[-1]
    assert (last.state, last.failure) == (OtaState.ROLLED_BACK, OtaFailure.BOOT)
    assert "broken build" in (last.reason or "")


async def test_a_trial_boot_cut_by_the_power_boots_again_and_commits(tmp_path, release_key):
    """Issue 29: kill -9 or a power cut in the trial boot is retried by the boot control, reported
    as interrupted on the way (not a failure of the release), and the update commits."""
    host = Host()
    await run_until_restart(updater(tmp_path, release_key, host), host, offer_of(release_key))
    updater(tmp_path, release_key, Host())  # the trial boot, cut before its health check
    after = Host()
    again = updater(tmp_path, release_key, after)
    assert (again.booted.trial, again.booted.interrupted) == (True, 1)
    again.start()
    await asyncio.wait_for(_until(lambda: after.states()[-1:] == [OtaState.COMMITTED]), 10)
    cut = [r for r in after.reports if r.failure is OtaFailure.INTERRUPTED]
    assert [r.state for r in cut] == [OtaState.HEALTH_CHECK]
    assert not OtaFailure.INTERRUPTED.blames_release


async def test_a_power_cut_during_install_starts_the_install_again_on_the_next_boot(tmp_path, release_key):
    host = Host()
    u = updater(tmp_path, release_key, host)
    cut = asyncio.Event()

    async def power_fails(state: OtaState, done: int) -> None:
        if state is OtaState.INSTALLING and done > 100_000:
            cut.set()
            await asyncio.sleep(3600)

    u.step_hooks.append(power_fails)
    await u.offer(offer_of(release_key))
    await asyncio.wait_for(cut.wait(), 10)
    await u.close()  # the power is gone
    assert BootControl(tmp_path, factory_version="1.4.2").next_boot().slot == "a"  # half-written b never boots
    again = Host()
    await run_until_restart(updater(tmp_path, release_key, again), again)
    assert again.states() == [OtaState.INSTALLING, OtaState.REBOOTING]
    assert BootControl(tmp_path, factory_version="1.4.2").next_boot().trial


@pytest.mark.parametrize(
    ("offer_args", "reason"),
    [
        ({"version": "1.4.0"}, "rollback refused"),
        ({"expires_at": NOW - 1}, "expired"),
        ({"key": Ed25519PrivateKey.generate()}, "not a trusted release key"),
    ],
    ids=["rollback-attack", "freeze-attack", "untrusted-key"],
)
async def test_an_offer_the_device_must_not_install_is_refused_and_reported(tmp_path, release_key, offer_args, reason):
    host = Host()
    u = updater(tmp_path, release_key, host)
    await u.offer(offer_of(release_key, **offer_args))
    [report] = host.reports
    assert (report.state, report.failure) == (OtaState.FAILED, OtaFailure.REFUSED)
    assert reason in (report.reason or "")
    assert not (tmp_path / "ota" / "artifact.part").exists()


async def test_an_artifact_that_is_not_the_manifests_is_never_installed(tmp_path, release_key):
    tampered = bytearray(ARTIFACT)
    tampered[1000] ^= 0xFF
    transport = httpx.MockTransport(
        lambda _: httpx.Response(200, headers={"content-length": str(len(tampered))}, content=bytes(tampered))
    )
    host = Host()
    u = updater(tmp_path, release_key, host, transport=transport)
    await u.offer(offer_of(release_key))
    await asyncio.wait_for(_until(lambda: host.states()[-1:] == [OtaState.FAILED]), 10)
    assert host.reports[-1].failure is OtaFailure.VERIFY
    assert BootControl(tmp_path, factory_version="1.4.2").next_boot().slot == "a"
    assert not (tmp_path / "slots" / "b").exists()


async def test_the_install_waits_for_the_window(tmp_path, release_key):
    clock = FakeClock(NOW)  # 22:13 in Beijing
    host = Host()
    u = updater(tmp_path, release_key, host, clock=clock)
    await u.offer(offer_of(release_key, window=DailySpan(start="02:00", end="05:00")))
    await asyncio.wait_for(_until(lambda: host.states()[-1:] == [OtaState.WAITING_WINDOW]), 10)
    await asyncio.sleep(0.1)
    assert host.states()[-1] is OtaState.WAITING_WINDOW  # still waiting
    clock.advance(4 * 3_600_000)  # 02:13
    await asyncio.wait_for(host.restarted.wait(), 10)
    await u.close()
    assert host.states()[-2:] == [OtaState.INSTALLING, OtaState.REBOOTING]


async def test_the_same_offer_again_is_answered_with_where_the_job_is(tmp_path, release_key):
    host = Host()
    u = updater(tmp_path, release_key, host)
    offer = offer_of(release_key, window=DailySpan(start="02:00", end="05:00"))
    await u.offer(offer)
    await asyncio.wait_for(_until(lambda: host.states()[-1:] == [OtaState.WAITING_WINDOW]), 10)
    await u.offer(offer)
    assert host.states()[-1] is OtaState.WAITING_WINDOW
    assert [s for s in host.states() if s is OtaState.QUEUED] == [OtaState.QUEUED]
    await u.close()


async def _until(check) -> None:
    while not check():  # noqa: ASYNC110 - polls a fake host's list of reports
        await asyncio.sleep(0.01)
