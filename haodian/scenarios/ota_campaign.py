"""`haodian sim ota`: a whole OTA campaign over simulated devices, with faults, checked at the end.

Longer than 400 lines because the scenario's set-up (server, boards, faults), its run and its
device-by-device check belong together: each is short, and apart they would pass the same dozen
values back and forth.

The fleet server (embedded broker and database by default) rolls release 1.5.0 out to N devices
on 1.4.2 of three models, in waves, while faults are injected:

- **flaky downloads** (default 10 % of devices): the link cuts the download at a random byte,
  once or twice; the device resumes where it was cut;
- **power cuts during install** (2 %): the power goes while the inactive slot is being written,
  and comes back a second later; the device starts the install again;
- **bad health on the new version** (1 % of the fleet, all on one model): the speaker's self
  test fails on 1.5.0; the device rolls back to 1.4.2, and that model's lane pauses itself.

At the end every device is checked on the device side (its boot control and what it runs), not
only on the server's word: each must be on 1.5.0 or on its old, working slot, and none may be
left without a bootable, working slot.

Then a follow-up campaign (1.6.0) goes to the whole fleet at once, without restarting anyone:
the devices that just committed 1.5.0 must take it as a new update (they once answered it with
`rolled_back`/`boot` at once), and **power cuts in the trial boot** (`trial_cuts`, default 2 %)
must be booted again and commit, counted as interrupted and not against the release: every
lane completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import EdgeAgent
from edge_agent.hardware.errors import AudioError
from edge_agent.hardware.ports import TtsState
from edge_agent.ota.slots import BootControl
from edge_agent.voice import Speaker
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import OtaState
from firmware_protocols.ota import ReleaseManifest, sign_manifest
from firmware_protocols.signing import encode_public_key
from fleet_server.auth.roles import Role
from fleet_server.ota.policy import ENDED, PENDING
from haodian.cli.output import table
from haodian.embedded import EmbeddedBroker, EmbeddedDatabase
from haodian.keys import load_server_keys
from haodian.server import Part, ServerStack
from haodian.settings import Settings
from simulators.fleet import BootHooks, SimulatedFleet
from simulators.mosquitto import MosquittoError, PrivateMosquitto

FROM_VERSION = "1.4.2"
TO_VERSION = "1.5.0"
FOLLOW_UP_VERSION = "1.6.0"
RELEASE = "haodian-speaker"
# The fleet's models and their shares; the last one gets what rounding leaves.
MODELS = (("HD-S1", 0.5), ("HD-S2", 0.3), ("HD-P2", 0.2))


@dataclass(frozen=True)
class OtaSimOptions:
    data_dir: Path
    devices: int = 1000
    flaky: float = 0.10
    power_cuts: float = 0.02
    bad_health: float = 0.01
    bad_model: str = "HD-S2"
    artifact_kib: int = 256
    seed: int = 7
    timeout_s: float = 1200.0
    # "auto": a private Mosquitto if it is installed, else the embedded amqtt (which does not
    # hold a thousand devices connecting at once in one process); "embedded"; or an mqtt:// URL.
    broker: str = "auto"
    database_url: str | None = None  # None: embedded PostgreSQL (a fresh database)
    progress: Callable[[str], None] = print
    prefix: str = "OTA"  # device ids: a shared broker's tests use their own
    # Campaign policy knobs the small test turns down.
    pause_min_devices: int = 20
    waves: tuple[float, ...] = (0.01, 0.05, 0.25, 1.0)
    follow_up: bool = True  # then 1.6.0 to everyone, with power cuts in the trial boot
    trial_cuts: float = 0.02


@dataclass
class FaultPlan:
    flaky: dict[str, list[int]] = field(default_factory=dict)  # device -> cut after these bytes
    power_cut: dict[str, int] = field(default_factory=dict)  # device -> cut after this many install bytes
    bad_health: set[str] = field(default_factory=set)
    trial_cut: set[str] = field(default_factory=set)  # power cut in the follow-up's trial boot
    cuts_done: int = 0
    power_cuts_done: int = 0
    trial_cuts_done: int = 0

    @classmethod
    def draw(cls, models: dict[str, str], options: OtaSimOptions, artifact_size: int) -> FaultPlan:
        rng = random.Random(options.seed)  # noqa: S311 - a seeded, repeatable fault draw
        devices = sorted(models)
        plan = cls()
        for device in rng.sample(devices, round(options.flaky * len(devices))):
            plan.flaky[device] = [rng.randrange(1, artifact_size) for _ in range(rng.choice((1, 2)))]
        for device in rng.sample(devices, round(options.power_cuts * len(devices))):
            plan.power_cut[device] = rng.randrange(1, artifact_size)
        candidates = [d for d in devices if models[d] == options.bad_model]
        plan.bad_health = set(rng.sample(candidates, min(len(candidates), round(options.bad_health * len(devices)))))
        if options.follow_up:
            plan.trial_cut = set(rng.sample(devices, max(1, round(options.trial_cuts * len(devices)))))
        return plan


class _CutStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, after: int, plan: FaultPlan) -> None:
        self._inner, self._after, self._plan = inner, after, plan

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in self._inner:
            if sent + len(chunk) >= self._after:
                yield chunk[: self._after - sent]
                self._plan.cuts_done += 1
                raise httpx.ReadError("connection cut mid-download (simulated 4G fault)")
            sent += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class CuttingTransport(httpx.AsyncBaseTransport):
    """Real HTTP, but the next responses' bodies are cut after the given byte counts."""

    def __init__(self, cuts: list[int], plan: FaultPlan) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._cuts = list(cuts)
        self._plan = plan

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if not self._cuts or response.status_code not in (200, 206):
            return response
        after = self._cuts.pop(0)
        assert isinstance(response.stream, httpx.AsyncByteStream)  # noqa: S101 - httpx's own transport
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CutStream(response.stream, after, self._plan),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class FaultySpeaker:
    """A speaker whose amplifier does not come up on the new version (its self test fails)."""

    def __init__(self, inner: Speaker) -> None:
        self._inner = inner

    async def say(self, name: str, text: str, *, volume: int) -> None:
        await self._inner.say(name, text, volume=volume)

    async def chip_state(self) -> TtsState | None:
        return await self._inner.chip_state()

    async def self_test(self) -> None:
        raise AudioError(f"amplifier does not start on {TO_VERSION} (simulated fault)")

    def use_voice(self, voice: str) -> bool:
        return self._inner.use_voice(voice)


def _hooks(plan: FaultPlan, fleet_ref: list[SimulatedFleet]) -> BootHooks:
    transports: dict[str, CuttingTransport] = {}

    def speaker(device_id: str, version: str, inner: Speaker) -> Speaker:
        return FaultySpeaker(inner) if device_id in plan.bad_health and version == TO_VERSION else inner

    def transport(device_id: str) -> httpx.AsyncBaseTransport | None:
        cuts = plan.flaky.get(device_id)
        if not cuts:
            return None
        return transports.setdefault(device_id, CuttingTransport(cuts, plan))

    def started(agent: EdgeAgent) -> None:
        if agent.ota is None:
            return
        device_id = agent.device_id
        if device_id in plan.trial_cut and agent.ota.booted.trial and agent.ota.running == FOLLOW_UP_VERSION:

            async def cut_trial(state: OtaState, _done: int) -> None:
                if state is OtaState.HEALTH_CHECK and device_id in plan.trial_cut:
                    plan.trial_cut.discard(device_id)  # once
                    plan.trial_cuts_done += 1
                    fleet_ref[0].power_cut(device_id, off_s=1.0)
                    await asyncio.sleep(3600)

            agent.ota.step_hooks.append(cut_trial)
        cut_at = plan.power_cut.get(device_id)
        if cut_at is None:
            return

        async def cut_power(state: OtaState, done: int) -> None:
            if state is OtaState.INSTALLING and done >= cut_at and agent.device_id in plan.power_cut:
                del plan.power_cut[agent.device_id]  # once
                plan.power_cuts_done += 1
                fleet_ref[0].power_cut(agent.device_id, off_s=1.0)
                await asyncio.sleep(3600)  # the power is gone: nothing after this runs

        agent.ota.step_hooks.append(cut_power)

    return BootHooks(speaker=speaker, transport=transport, started=started)


def model_for(index: int, count: int) -> str:
    """The model of device `index` (1-based) of `count`, by the shares in MODELS."""
    edge = 0.0
    for model, share in MODELS:
        edge += share * count
        if index <= round(edge):
            return model
    return MODELS[-1][0]


@dataclass
class OtaSimReport:
    campaign: dict[str, Any]
    rows: list[dict[str, Any]]
    devices: int
    on_new: int
    on_old_working: int
    without_working_slot: int
    mismatched: list[str]
    faults: dict[str, int]
    elapsed_s: float
    paused_models: list[str]
    follow_up: OtaSimReport | None = None  # the 1.6.0 campaign after it

    def table(self) -> str:
        headers = ["型号 model", "目标 targeted", "已升级 committed", "已回滚 rolled back", "失败 failed",
                   "未下发 not offered", "离线 unreachable", "通道 lane"]  # fmt: skip
        keys = ["model", "targeted", "committed", "rolled_back", "failed", "pending", "unreachable", "lane"]
        return table(headers, [[str(r[k]) for k in keys] for r in self.rows])


async def run_ota_simulation(options: OtaSimOptions, settings: Settings) -> OtaSimReport:
    say = options.progress
    started = time.monotonic()
    release_key = Ed25519PrivateKey.generate()  # made for this run only: a test release key
    release_pub = encode_public_key(release_key.public_key())
    settings = settings.model_copy(
        update={
            "data_dir": options.data_dir,
            "http_port": 0,
            "signing_key_file": None,
            "backend_public_key_file": None,
            "ota_release_keys": [release_pub],
            "ota_round_s": 0.5,
            "database_url": options.database_url,
        }
    )
    keys = load_server_keys(settings)
    models = {f"{options.prefix}{i:05d}": model_for(i, options.devices) for i in range(1, options.devices + 1)}
    artifact = random.Random(options.seed).randbytes(  # noqa: S311 - test bytes, not a secret
        options.artifact_kib * 1024
    )
    plan = FaultPlan.draw(models, options, len(artifact))
    async with contextlib.AsyncExitStack() as stack:
        broker_url = await _broker(stack, options)
        if broker_url is None:
            broker = await stack.enter_async_context(EmbeddedBroker())
            broker_url = f"mqtt://{broker.host}:{broker.port}"
        else:
            settings = settings.model_copy(update={"mqtt_url": broker_url})
        endpoint = BrokerEndpoint.from_url(broker_url)
        database_url = options.database_url
        if database_url is None:
            database = await stack.enter_async_context(
                EmbeddedDatabase(options.data_dir / "pg", "haodian_ota_sim", fresh=True)
            )
            database_url = database.url
        server = await stack.enter_async_context(
            ServerStack(settings, parts={Part.FLEET}, endpoint=endpoint, database_url=database_url, keys=keys)
        )
        say(f"  fleet server {server.base_url}; broker {broker_url}")
        fleet_ref: list[SimulatedFleet] = []
        fleet = await stack.enter_async_context(
            SimulatedFleet(
                options.devices,
                broker_url=broker_url,
                server_keys=[keys.server_public_key_b64],
                base_dir=options.data_dir / "ota-sim",
                prefix=options.prefix,
                health_interval_s=600.0,
                model_of=lambda i: models[f"{options.prefix}{i:05d}"],
                agent_settings={
                    "firmware": FROM_VERSION,
                    "release_keys": [release_pub],
                    "ota_retry_initial_s": 0.2,
                    "ota_max_rate_bps": None,
                    "ota_health_timeout_s": 30.0,
                },
                hooks=_hooks(plan, fleet_ref),
            )
        )
        fleet_ref.append(fleet)
        # The simulation acts as the release team's ops-admin, through the API as anyone would.
        token = await server.auth.service_token("sim-ota", Role.OPS_ADMIN)
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=server.base_url, timeout=30, headers={"authorization": f"Bearer {token}"})
        )
        await fleet.wait_connected(120)
        await _wait_registered(client, options.devices, say)
        say(
            f"  {options.devices} devices on {FROM_VERSION} "
            f"({', '.join(f'{m} {list(models.values()).count(m)}' for m, _ in MODELS)}); faults: "
            f"{len(plan.flaky)} flaky downloads, {len(plan.power_cut)} power cuts during install, "
            f"{len(plan.bad_health)} bad health on {TO_VERSION} ({options.bad_model})"
        )
        await _publish_release(client, release_key, TO_VERSION, artifact)
        campaign = await _campaign(client, TO_VERSION, options, say)
        report = await _settled(client, fleet, campaign, plan, new=TO_VERSION, old=FROM_VERSION)
        if options.follow_up:
            say(f"  follow-up {FOLLOW_UP_VERSION} to everyone at once; {len(plan.trial_cut)} power cuts in trial boots")
            again = random.Random(options.seed + 1).randbytes(len(artifact))  # noqa: S311 - test bytes
            await _publish_release(client, release_key, FOLLOW_UP_VERSION, again)
            follow_up = await _campaign(client, FOLLOW_UP_VERSION, options, say, waves=[1.0])
            report.follow_up = await _settled(client, fleet, follow_up, plan, new=FOLLOW_UP_VERSION, old=None)
    report.elapsed_s = time.monotonic() - started
    return report


async def _settled(
    client: httpx.AsyncClient,
    fleet: SimulatedFleet,
    campaign: dict[str, Any],
    plan: FaultPlan,
    *,
    new: str,
    old: str | None,
    within_s: float = 30.0,
) -> OtaSimReport:
    """The device-side check, once the devices and the server agree (or `within_s` passed): a
    device's last report may still be on its way when the server's campaign is at rest (a trial
    that said hello with the new version and then rolled back, on a loaded machine)."""
    deadline = time.monotonic() + within_s
    while True:
        report = _check_devices(fleet, campaign, plan, new=new, old=old)
        committed = sum(row["committed"] for row in report.rows)
        if (report.on_new == committed and not report.mismatched) or time.monotonic() > deadline:
            return report
        await asyncio.sleep(1.0)
        campaign = _check(await client.get(f"/api/v1/ota/campaigns/{campaign['campaign_id']}"))


async def _campaign(
    client: httpx.AsyncClient,
    version: str,
    options: OtaSimOptions,
    say: Callable[[str], None],
    waves: list[float] | None = None,
) -> dict[str, Any]:
    """Start a campaign of `version` and follow it to its end."""
    response = await client.post(
        "/api/v1/ota/campaigns",
        json={
            "release_name": RELEASE,
            "version": version,
            "campaign_id": f"sim-{version}-{int(time.time())}",
            "policy": {
                "waves": waves or list(options.waves),
                "wave_success": 0.95,
                "pause_failure_rate": 0.02,
                "pause_min_devices": options.pause_min_devices,
                "window": None,
                "device_timeout_s": 120,
                "max_attempts": 3,
                "max_rate_bps": None,
            },
        },
    )
    _check(response)
    campaign_id = response.json()["campaign_id"]
    say(f"  campaign {campaign_id}: {response.json()['targeted']} devices targeted")
    return await _follow(client, campaign_id, options, say)


async def _broker(stack: contextlib.AsyncExitStack, options: OtaSimOptions) -> str | None:
    """The broker URL to use; None for the embedded amqtt."""
    if options.broker == "embedded":
        return None
    if options.broker != "auto":
        return options.broker
    try:
        mosquitto = PrivateMosquitto(options.data_dir / "ota-sim-mosquitto", persistence=False)
    except MosquittoError:
        return None
    await asyncio.to_thread(mosquitto.start)
    stack.callback(mosquitto.stop)
    return mosquitto.url()


async def _wait_registered(client: httpx.AsyncClient, count: int, say: Callable[[str], None]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = await client.get("/api/v1/devices", params={"limit": 10_000})
        devices = [d for d in _check(response) if d["firmware"] == FROM_VERSION and d["model"]]
        if len(devices) >= count:
            return
        await asyncio.sleep(1.0)
    say(f"  only {len(devices)}/{count} devices said hello within 120 s")


async def _publish_release(
    client: httpx.AsyncClient, release_key: Ed25519PrivateKey, version: str, artifact: bytes
) -> None:
    now_ms = time.time_ns() // 1_000_000
    manifest = sign_manifest(
        ReleaseManifest(
            name=RELEASE,
            version=version,
            models=[m for m, _ in MODELS],
            min_version="1.2.0",
            size=len(artifact),
            sha256=hashlib.sha256(artifact).hexdigest(),
            issued_at=now_ms,
            expires_at=now_ms + 30 * 86_400_000,
        ),
        release_key,
    )
    _check(await client.post("/api/v1/ota/releases", json=manifest.model_dump(mode="json", exclude_none=True)))
    _check(
        await client.put(
            f"/api/v1/ota/releases/{RELEASE}/{version}/artifact",
            content=artifact,
            headers={"content-type": "application/octet-stream"},
        )
    )


async def _follow(
    client: httpx.AsyncClient, campaign_id: str, options: OtaSimOptions, say: Callable[[str], None]
) -> dict[str, Any]:
    deadline = time.monotonic() + options.timeout_s
    last = ""
    while True:
        campaign: dict[str, Any] = _check(await client.get(f"/api/v1/ota/campaigns/{campaign_id}"))
        moving = {s: n for s, n in campaign["by_state"].items() if s not in ENDED and s != PENDING}
        line = (
            f"  [{campaign['status']}] "
            + " ".join(
                f"{lane['model']}:w{lane['wave']}/{lane['waves']}:{lane['status']}" for lane in campaign["lanes"]
            )
            + " | "
            + ", ".join(f"{s} {n}" for s, n in sorted(campaign["by_state"].items()))
        )
        if line != last:
            say(line)
            last = line
        if campaign["status"] in ("completed", "paused", "aborted") and not moving:
            return campaign
        if time.monotonic() > deadline:
            say(f"  campaign still running after {options.timeout_s:.0f} s; stopping here")
            return campaign
        await asyncio.sleep(1.0)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response.json()


def _check_devices(
    fleet: SimulatedFleet, campaign: dict[str, Any], plan: FaultPlan, *, new: str, old: str | None
) -> OtaSimReport:
    """Every device on `new`, or on `old` (None: any earlier version) from a working slot."""
    on_new = on_old = broken = 0
    mismatched: list[str] = []
    known = {FROM_VERSION, TO_VERSION, FOLLOW_UP_VERSION}
    for config in fleet.configs:
        boot = BootControl(config.state_dir, factory_version=FROM_VERSION, factory_slot=config.slot)
        agent = fleet.agent(config.device_id)
        running = agent.config.firmware if agent is not None else None
        works = boot.active in boot.bootable() and boot.version_of(boot.active) in known
        if not works:
            broken += 1
        if running == new and boot.version_of(boot.active) == new:
            on_new += 1
        elif running is not None and running != new and (old is None or running == old) and works:
            on_old += 1
        else:
            mismatched.append(config.device_id)
    rows = []
    for lane in campaign["lanes"]:
        states = lane["by_state"]
        rows.append(
            {
                "model": lane["model"],
                "targeted": lane["targets"],
                "committed": states.get("committed", 0),
                "rolled_back": states.get("rolled_back", 0),
                "failed": states.get("failed", 0),
                "pending": states.get(PENDING, 0),
                "unreachable": states.get("unreachable", 0),
                "lane": lane["status"] + (f" ({lane['status_reason']})" if lane["status_reason"] else ""),
            }
        )
    return OtaSimReport(
        campaign=campaign,
        rows=rows,
        devices=len(fleet.configs),
        on_new=on_new,
        on_old_working=on_old,
        without_working_slot=broken,
        mismatched=mismatched,
        faults={
            "flaky_devices": len(plan.flaky),
            "download_cuts": plan.cuts_done,
            "power_cuts": plan.power_cuts_done,
            "trial_cuts": plan.trial_cuts_done,
            "bad_health_devices": len(plan.bad_health),
        },
        elapsed_s=0.0,
        paused_models=[lane["model"] for lane in campaign["lanes"] if lane["status"] == "paused"],
    )
