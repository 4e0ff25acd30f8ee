"""The device's side of an update: one job at a time, a state per step, each reported.

Longer than 400 lines because the job is one state machine: each step, how it resumes after a
restart and what it reports read together; split, the steps would pass the job between modules.

    queued → downloading → verifying → waiting_window → installing → rebooting
           → (restart into the new slot, as a trial) → health_check → committed
    any failure before the reboot → failed (the running slot was never touched)
    a failed health check, or a reboot before commit → rolled_back (the old slot boots again)

The job lives in `<state>/ota/job.json` and the download in `<state>/ota/artifact.part`, so
every step survives a restart: a download resumes where it was cut, an install cut by a power
failure starts the inactive slot again (the active slot is never written), and a trial slot
that restarts before it commits is dropped by the boot control (`slots.BootControl`).

The offer's server signature is checked by the agent before it gets here; the updater checks
the manifest (release key, model, newer version, not expired) when it takes the offer and again
before it installs, and the artifact's size and SHA-256 before it installs. A device that runs
its agent from the slot (`payload="agent"`) installs only an agent build of the offered version
(`builds`), unpacked into the slot; a simulated board (`"image"`) writes the bytes as they are.

A trial boot cut from outside (power, kill) is booted again by the boot control and reported on
its way (`health_check` with failure `interrupted`); the trial is dropped only by what the new
software does (a crash, a hang, a failed health check) or by too many cuts (`failed` with
`interrupted`, which the server offers again and does not blame on the release).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.clock import Clock
from edge_agent.errors import AgentError
from edge_agent.ota import builds
from edge_agent.ota.download import DownloadRefused, discard, download
from edge_agent.ota.slots import PAYLOAD_FILE, RELEASE_FILE, BootChoice, BootControl, other
from edge_agent.state_files import read_json, write_json
from firmware_protocols.errors import ManifestError
from firmware_protocols.messages import OtaFailure, OtaOffer, OtaState, OtaStatus, local_minute
from firmware_protocols.ota import ArtifactDigest, Version, check_artifact, check_manifest

log = structlog.get_logger(__name__)

JOB_FILE = "job.json"
PART_FILE = "artifact.part"
# Progress is reported at these fractions of the download, besides every change of state.
PROGRESS_STEPS = 4
INSTALL_CHUNK_BYTES = 64 * 1024


class UpdateHost(Protocol):
    """What the updater needs from the agent around it."""

    async def send_ota_status(self, status: OtaStatus) -> None: ...

    def request_restart(self, reason: str) -> None:
        """Restart the device (into the slot the boot control chooses)."""
        ...

    async def health_problems(self) -> list[str]:
        """What is wrong with the running system (empty: healthy): broker, audio, announce path."""
        ...


# Called on every step (state, bytes done); the simulator cuts the power from here.
StepHook = Callable[[OtaState, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    download_attempts: int = 10
    retry_initial_s: float = 2.0
    retry_max_s: float = 60.0
    max_rate_bps: int | None = None  # the device's own cap; an offer may ask for less
    trial_boots: int = 1
    health_timeout_s: float = 60.0
    http_timeout_s: float = 30.0
    window_poll_s: float = 30.0  # how often a job waiting for its install window looks at the clock
    # "agent": artifacts are agent builds, unpacked into the slot the launcher runs the agent
    # from; "image": opaque images written as they are (the simulated boards).
    payload: Literal["agent", "image"] = "agent"
    install_rate_bps: int | None = None  # the slot's write rate cap (slow flash), None: none


class UpdateStepFailed(AgentError):
    """An update step that failed, with the failure code the server is told."""

    def __init__(self, failure: OtaFailure, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure
        self.reason = reason


class Updater:
    def __init__(
        self,
        *,
        device_id: str,
        model: str,
        state_dir: Path,
        boot_control: BootControl,
        booted: BootChoice,
        release_keys: Mapping[str, Ed25519PublicKey],
        host: UpdateHost,
        clock: Clock,
        policy: UpdatePolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.device_id = device_id
        self.model = model
        self.folder = state_dir / "ota"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.boot_control = boot_control
        self.booted = booted
        self.release_keys = release_keys
        self.policy = policy or UpdatePolicy()
        self.step_hooks: list[StepHook] = []
        self._host = host
        self._clock = clock
        self._transport = transport
        self._job: dict[str, Any] | None = read_json(self.folder / JOB_FILE)
        self._task: asyncio.Task[None] | None = None
        self._reported_in_run = False
        self._log = log.bind(device_id=device_id)

    @property
    def running(self) -> str:
        return self.booted.version

    @property
    def state(self) -> OtaState | None:
        return OtaState(self._job["state"]) if self._job else None

    @property
    def offer_in_hand(self) -> OtaOffer | None:
        if self._job is None:
            return None
        try:
            return OtaOffer.model_validate(self._job["offer"])
        except (ValueError, KeyError):
            return None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Carry on with the job the last run left (called once the agent runs)."""
        offer = self.offer_in_hand
        if self._job is None or offer is None or OtaState(self._job["state"]).terminal:
            return
        self._spawn(offer)

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, offer: OtaOffer) -> None:
        self._task = asyncio.create_task(self._run(offer), name=f"ota:{self.device_id}")

    # -- offers --------------------------------------------------------------------------

    async def offer(self, offer: OtaOffer) -> None:
        """Take a verified (server-signed, unexpired) offer, or say why not."""
        version = offer.manifest.version
        current = self.offer_in_hand
        state = self.state
        if current is not None and state is not None:
            same = current.campaign_id == offer.campaign_id and current.manifest.version == version
            if same and (not state.terminal or state is OtaState.COMMITTED):
                # The server asks again (a lost report, a retry): tell it where this job is.
                await self._report(current, state)
                return
            if state in (OtaState.INSTALLING, OtaState.REBOOTING, OtaState.HEALTH_CHECK):
                self._log.info("ota offer deferred: an install is under way", campaign_id=offer.campaign_id)
                return
        if _is_version(self.running) and Version(self.running) == Version(version):
            await self._new_job(offer, OtaState.COMMITTED)  # already there (an earlier campaign)
            return
        try:
            self._check_manifest(offer)
        except ManifestError as exc:
            self._log.warning("ota offer refused", campaign_id=offer.campaign_id, reason=str(exc))
            await self._report(offer, OtaState.FAILED, failure=OtaFailure.REFUSED, reason=str(exc), attempt=0)
            return
        if current is not None and state is not None and not state.terminal:
            await self.close()
            await self._report(current, OtaState.FAILED, failure=OtaFailure.SUPERSEDED, reason=f"replaced by {version}")
        discard(self.folder / PART_FILE)
        await self._new_job(offer, OtaState.QUEUED)
        self._spawn(offer)

    def _check_manifest(self, offer: OtaOffer) -> None:
        check_manifest(
            offer.manifest,
            trusted=self.release_keys,
            model=self.model,
            current=self.running,
            now_ms=self._clock.now_ms(),
        )

    async def _new_job(self, offer: OtaOffer, state: OtaState) -> None:
        self._job = {"offer": offer.model_dump(mode="json"), "state": state.value, "attempt": 0}
        self._save()
        await self._report(offer, state)

    # -- the steps -------------------------------------------------------------------------

    async def _run(self, offer: OtaOffer) -> None:
        self._reported_in_run = False  # a resumed job says where it is, even if unchanged
        try:
            await self._steps(offer)
        except UpdateStepFailed as exc:
            await self._fail(offer, exc.failure, exc.reason)

    async def _steps(self, offer: OtaOffer) -> None:
        state = self.state
        if self.booted.trial or state in (OtaState.REBOOTING, OtaState.HEALTH_CHECK):
            # A trial boot means the install finished, even if the power went before the job
            # file said so.
            await self._after_reboot(offer)
            return
        if state in (OtaState.QUEUED, OtaState.DOWNLOADING):
            await self._download(offer)
            state = OtaState.VERIFYING
        if state is OtaState.VERIFYING:
            await self._verify(offer)
            state = OtaState.WAITING_WINDOW
        if state is OtaState.WAITING_WINDOW:
            await self._wait_window(offer)
            state = OtaState.INSTALLING
        if state is OtaState.INSTALLING:
            await self._install(offer)
            await self._step(offer, OtaState.REBOOTING)
            self._host.request_restart("ota")

    async def _download(self, offer: OtaOffer) -> None:
        manifest = offer.manifest
        part = self.folder / PART_FILE
        rates = [r for r in (offer.max_rate_bps, self.policy.max_rate_bps) if r]
        next_report = [manifest.size // PROGRESS_STEPS]

        async def progress(done: int) -> None:
            if done >= next_report[0] and done < manifest.size:
                next_report[0] = done + manifest.size // PROGRESS_STEPS
                await self._report(offer, OtaState.DOWNLOADING, bytes_done=done)

        delay = self.policy.retry_initial_s
        for attempt in range(1, self.policy.download_attempts + 1):
            self._job_update(attempt=attempt)
            await self._step(offer, OtaState.DOWNLOADING, bytes_done=_size_of(part))
            try:
                async with httpx.AsyncClient(transport=self._transport, timeout=self.policy.http_timeout_s) as client:
                    await download(
                        client,
                        offer.url,
                        part,
                        size=manifest.size,
                        etag=f'"{manifest.sha256}"',
                        max_rate_bps=min(rates) if rates else None,
                        on_progress=progress,
                    )
            except DownloadRefused as exc:
                raise UpdateStepFailed(OtaFailure.DOWNLOAD, str(exc)) from exc
            except (httpx.HTTPError, OSError) as exc:
                self._log.info(
                    "ota download cut; will resume",
                    attempt=attempt,
                    have=_size_of(part),
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
                if attempt == self.policy.download_attempts:
                    raise UpdateStepFailed(
                        OtaFailure.DOWNLOAD, f"{attempt} attempts: {type(exc).__name__}: {exc}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.retry_max_s)
            else:
                return

    async def _verify(self, offer: OtaOffer) -> None:
        await self._step(offer, OtaState.VERIFYING, bytes_done=offer.manifest.size)
        part = self.folder / PART_FILE
        try:
            await asyncio.to_thread(_check_file, offer, part)
        except ManifestError as first:
            # A power cut can leave garbage behind a file's end; a whole fresh download tells
            # that apart from an artifact that is not what its manifest says.
            self._log.warning("ota artifact does not verify; downloading it again", error=str(first))
            discard(part)
            await self._download(offer)
            try:
                await asyncio.to_thread(_check_file, offer, part)
            except ManifestError as exc:
                discard(part)
                raise UpdateStepFailed(OtaFailure.VERIFY, str(exc)) from exc

    async def _wait_window(self, offer: OtaOffer) -> None:
        await self._step(offer, OtaState.WAITING_WINDOW, bytes_done=offer.manifest.size)
        window = offer.window
        # Polled in short steps: nothing signals the hour, and the board's clock may be corrected
        # (NTP) while it waits.
        while window is not None and not window.contains(local_minute(self._clock.now_ms(), offer.utc_offset_min)):  # noqa: ASYNC110
            await asyncio.sleep(self.policy.window_poll_s)
        try:
            self._check_manifest(offer)  # again: it may have expired while waiting
        except ManifestError as exc:
            raise UpdateStepFailed(OtaFailure.REFUSED, str(exc)) from exc

    async def _install(self, offer: OtaOffer) -> None:
        manifest = offer.manifest
        slot = other(self.booted.slot)
        part = self.folder / PART_FILE
        await self._step(offer, OtaState.INSTALLING, bytes_done=0)
        self._job_update(slot=slot)

        started = asyncio.get_running_loop().time()

        async def written(done: int) -> None:
            for hook in self.step_hooks:
                await hook(OtaState.INSTALLING, done)
            if rate := self.policy.install_rate_bps:
                ahead = done / rate - (asyncio.get_running_loop().time() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)

        if self.policy.payload == "agent":
            try:  # before the slot is touched
                await asyncio.to_thread(builds.read_build, part, manifest.version)
            except builds.BuildError as exc:
                discard(part)
                raise UpdateStepFailed(OtaFailure.VERIFY, str(exc)) from exc
        try:
            folder = self.boot_control.begin_install(slot)
            if self.policy.payload == "agent":
                await builds.unpack(part, folder / builds.APP_DIR, written)
            else:
                with part.open("rb") as source, (folder / PAYLOAD_FILE).open("wb") as target:
                    done = 0
                    while chunk := source.read(INSTALL_CHUNK_BYTES):
                        target.write(chunk)
                        done += len(chunk)
                        await written(done)
            write_json(folder / RELEASE_FILE, manifest.model_dump(mode="json"))
            self.boot_control.finish_install(slot, manifest.version)
            self.boot_control.try_next(slot, tries=self.policy.trial_boots)
        except OSError as exc:
            raise UpdateStepFailed(OtaFailure.INSTALL, f"cannot write slot {slot}: {exc}") from exc
        except builds.BuildError as exc:
            raise UpdateStepFailed(OtaFailure.VERIFY, str(exc)) from exc
        discard(part)

    async def _after_reboot(self, offer: OtaOffer) -> None:
        job = self._job or {}
        slot = job.get("slot")
        booted = self.booted
        if not (booted.trial and booted.slot == slot and booted.version == offer.manifest.version):
            why = booted.dropped or f"slot {slot} restarted before it committed"
            failure = OtaFailure.INTERRUPTED if booted.dropped_interrupted else OtaFailure.BOOT
            raise UpdateStepFailed(failure, f"{why}; back on {booted.slot}")
        await self._step(offer, OtaState.HEALTH_CHECK)
        if booted.interrupted:
            cut = f"trial boot cut {booted.interrupted} time(s) from outside (power or kill); booted again"
            await self._report(offer, OtaState.HEALTH_CHECK, failure=OtaFailure.INTERRUPTED, reason=cut)
        problems = await self._host.health_problems()
        if problems:
            why = "; ".join(problems)[:128]
            self.boot_control.abandon(booted.slot, f"slot {booted.slot} ({booted.version}): health check: {why}")
            await self._finish(offer, OtaState.ROLLED_BACK, OtaFailure.HEALTH_CHECK, why)
            self._host.request_restart("rollback")
            return
        self.boot_control.commit(booted.slot)
        # What runs is committed now: the next offer is a new update, not this trial's end.
        self.booted = replace(booted, trial=False)
        await self._finish(offer, OtaState.COMMITTED, None, None)
        self._log.info("ota committed", version=offer.manifest.version, slot=booted.slot)

    async def _fail(self, offer: OtaOffer, failure: OtaFailure, reason: str) -> None:
        state = OtaState.ROLLED_BACK if failure in (OtaFailure.BOOT, OtaFailure.HEALTH_CHECK) else OtaState.FAILED
        self._log.warning("ota did not commit", campaign_id=offer.campaign_id, failure=failure.value, reason=reason)
        await self._finish(offer, state, failure, reason[:128])

    async def _finish(self, offer: OtaOffer, state: OtaState, failure: OtaFailure | None, reason: str | None) -> None:
        self._job_update(state=state.value, failure=failure.value if failure else None, reason=reason)
        await self._report(offer, state, failure=failure, reason=reason)

    # -- bookkeeping ---------------------------------------------------------------------

    async def _step(self, offer: OtaOffer, state: OtaState, *, bytes_done: int = 0) -> None:
        if self.state is not state or not self._reported_in_run:
            self._reported_in_run = True
            self._job_update(state=state.value)
            await self._report(offer, state, bytes_done=bytes_done)
        for hook in self.step_hooks:
            await hook(state, bytes_done)

    def _job_update(self, **changes: Any) -> None:
        if self._job is not None:
            self._job.update(changes)
            self._save()

    def _save(self) -> None:
        if self._job is not None:
            write_json(self.folder / JOB_FILE, self._job, durable=True)

    async def _report(
        self,
        offer: OtaOffer,
        state: OtaState,
        *,
        bytes_done: int = 0,
        failure: OtaFailure | None = None,
        reason: str | None = None,
        attempt: int | None = None,
    ) -> None:
        job = self._job or {}
        if failure is None and state.terminal:
            failure = OtaFailure(job["failure"]) if job.get("failure") else None
            reason = reason or job.get("reason")
        status = OtaStatus(
            device_id=self.device_id,
            ts=self._clock.now_ms(),
            campaign_id=offer.campaign_id,
            version=offer.manifest.version,
            state=state,
            running=self.running[:128],
            slot=self.booted.slot,
            bytes_done=bytes_done,
            bytes_total=offer.manifest.size,
            attempt=attempt if attempt is not None else int(job.get("attempt", 0)),
            failure=failure,
            reason=reason[:128] if reason else None,
        )
        await self._host.send_ota_status(status)


def _check_file(offer: OtaOffer, path: Path) -> None:
    digest = ArtifactDigest()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
    except FileNotFoundError:
        pass
    check_artifact(offer.manifest, digest)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except ManifestError:
        return False
    return True
