"""OTA end to end: releases and artifacts through the real server (Range, ETag, refusals), and a
whole campaign over simulated devices with injected faults, checked device by device."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_protocols.ota import ReleaseManifest, sign_manifest
from firmware_protocols.signing import encode_public_key
from fleet_server.auth.roles import Role
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.devices.bindings import Bindings
from fleet_server.devices.importer import import_registry
from fleet_server.errors import OtaError
from fleet_server.ota.policy import CampaignPolicy, TargetSelector
from fleet_server.ota.store import OtaStore
from haodian.cli import build_parser
from haodian.cli.ota import run
from haodian.scenarios.ota_campaign import OtaSimOptions, run_ota_simulation
from haodian.settings import Settings
from simulators.registry import register
from tests.integration.conftest import api_client, eventually, in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ARTIFACT = random.Random(11).randbytes(100_000)
SHA = hashlib.sha256(ARTIFACT).hexdigest()


def manifest_json(key: Ed25519PrivateKey, version: str = "2.0.0", artifact: bytes = ARTIFACT) -> dict:
    now_ms = time.time_ns() // 1_000_000
    manifest = ReleaseManifest(
        name="haodian-speaker",
        version=version,
        models=["HD-S1"],
        size=len(artifact),
        sha256=hashlib.sha256(artifact).hexdigest(),
        issued_at=now_ms,
        expires_at=now_ms + 86_400_000,
    )
    return sign_manifest(manifest, key).model_dump(mode="json", exclude_none=True)


async def store_with_release(pool, tmp_path, release_key) -> OtaStore:
    """An OTA store holding release 2.0.0 with its artifact uploaded."""
    store = OtaStore(pool, tmp_path / "artifacts")
    await store.add_release(ReleaseManifest.model_validate(manifest_json(release_key)))

    async def chunks():
        yield ARTIFACT

    await store.store_artifact("haodian-speaker", "2.0.0", chunks())
    return store


@pytest.fixture(scope="module")
def release_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()  # made for this run: test-only


@pytest.fixture
async def api(tmp_path, embedded_database, server_keys, unique, release_key):
    settings = Settings(
        data_dir=tmp_path,
        http_port=0,
        mqtt_client_prefix=f"t{unique}",
        ota_release_keys=[encode_public_key(release_key.public_key())],
    )
    async with (
        in_process_stack(settings, embedded_database, server_keys) as (_, server),
        await api_client(server) as client,
    ):
        yield client


async def test_releases_are_checked_and_artifacts_served_resumable_with_etags(api, release_key):
    forged = await api.post("/api/v1/ota/releases", json=manifest_json(Ed25519PrivateKey.generate()))
    assert forged.status_code == 422
    assert forged.json()["error"]["code"] == "MANIFEST_SIGNATURE"

    assert (await api.post("/api/v1/ota/releases", json=manifest_json(release_key))).status_code == 201
    other = manifest_json(release_key, artifact=b"another build")
    clash = await api.post("/api/v1/ota/releases", json=other)
    assert (clash.status_code, clash.json()["error"]["code"]) == (409, "RELEASE_EXISTS")

    url = "/api/v1/ota/releases/haodian-speaker/2.0.0/artifact"
    wrong = await api.put(url, content=ARTIFACT[:-1] + b"\x00")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "ARTIFACT_MISMATCH")
    assert (await api.get(f"/ota/artifacts/{SHA}")).status_code == 404  # nothing kept from the bad upload
    uploaded = await api.put(url, content=ARTIFACT)
    assert uploaded.status_code == 200
    assert uploaded.json()["uploaded_at"]

    whole = await api.get(f"/ota/artifacts/{SHA}")
    assert (whole.status_code, whole.content, whole.headers["etag"]) == (200, ARTIFACT, f'"{SHA}"')
    assert whole.headers["accept-ranges"] == "bytes"
    rest = await api.get(f"/ota/artifacts/{SHA}", headers={"range": "bytes=40000-", "if-range": f'"{SHA}"'})
    assert (rest.status_code, rest.content) == (206, ARTIFACT[40000:])
    assert rest.headers["content-range"] == f"bytes 40000-{len(ARTIFACT) - 1}/{len(ARTIFACT)}"
    changed = await api.get(f"/ota/artifacts/{SHA}", headers={"range": "bytes=40000-", "if-range": '"other"'})
    assert (changed.status_code, changed.content) == (200, ARTIFACT)  # not the same artifact: all of it
    cached = await api.get(f"/ota/artifacts/{SHA}", headers={"if-none-match": f'"{SHA}"'})
    assert cached.status_code == 304
    beyond = await api.get(f"/ota/artifacts/{SHA}", headers={"range": f"bytes={len(ARTIFACT) + 5}-"})
    assert beyond.status_code == 416
    assert (await api.get("/ota/artifacts/" + "0" * 64)).status_code == 404
    assert (await api.get("/ota/artifacts/not-a-hash")).status_code == 422


async def test_campaign_requests_get_clear_errors(api, release_key):
    missing = await api.post("/api/v1/ota/campaigns", json={"release_name": "nope", "version": "1.0.0"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "RELEASE_NOT_FOUND")
    assert (await api.post("/api/v1/ota/releases", json=manifest_json(release_key))).status_code == 201
    early = await api.post("/api/v1/ota/campaigns", json={"release_name": "haodian-speaker", "version": "2.0.0"})
    assert (early.status_code, early.json()["error"]["code"]) == (409, "ARTIFACT_MISSING")
    await api.put("/api/v1/ota/releases/haodian-speaker/2.0.0/artifact", content=ARTIFACT)
    nobody = await api.post("/api/v1/ota/campaigns", json={"release_name": "haodian-speaker", "version": "2.0.0"})
    assert (nobody.status_code, nobody.json()["error"]["code"]) == (422, "NO_TARGETS")
    bad_waves = await api.post(
        "/api/v1/ota/campaigns",
        json={"release_name": "haodian-speaker", "version": "2.0.0", "policy": {"waves": [0.5, 0.2]}},
    )
    assert (bad_waves.status_code, bad_waves.json()["error"]["code"]) == (422, "INVALID_REQUEST")
    assert (await api.post("/api/v1/ota/campaigns/none/pause")).status_code == 404
    assert (await api.post("/api/v1/ota/campaigns/none/explode")).status_code == 422


async def test_a_campaign_with_faults_ends_with_every_device_on_a_working_slot(
    tmp_path, machine_mosquitto, machine_database, unique
):
    """60 devices of three models; a fifth of the downloads cut, a tenth of the installs hit by a
    power cut, a tenth of the fleet (all HD-S2) failing health on the new version; then a
    follow-up campaign to all at once, a tenth of them losing power in the trial boot."""
    lines: list[str] = []
    options = OtaSimOptions(
        data_dir=tmp_path,
        devices=60,
        flaky=0.2,
        power_cuts=0.1,
        bad_health=0.1,
        bad_model="HD-S2",
        artifact_kib=64,
        seed=3,
        timeout_s=240,
        broker=f"mqtt://{machine_mosquitto[0]}:{machine_mosquitto[1]}",
        database_url=machine_database,
        progress=lines.append,
        prefix=f"O{unique}",
        pause_min_devices=5,
        trial_cuts=0.1,
    )
    report = await run_ota_simulation(options, Settings(mqtt_client_prefix=f"t{unique}"))
    progress = "\n".join(lines)
    assert report.without_working_slot == 0, progress
    assert report.mismatched == [], progress
    assert report.paused_models == ["HD-S2"], progress
    lanes = {row["model"]: row for row in report.rows}
    for model in ("HD-S1", "HD-P2"):
        assert lanes[model]["lane"] == "completed", progress
        assert lanes[model]["committed"] == lanes[model]["targeted"], progress
    assert lanes["HD-S2"]["rolled_back"] >= 1
    assert report.campaign["failures"].keys() <= {"health_check", "boot"}, report.campaign["failures"]
    assert report.faults["download_cuts"] > 0
    assert report.faults["power_cuts"] > 0
    assert report.on_new == sum(row["committed"] for row in report.rows), progress
    # The follow-up to everyone, right after the commits and with power cuts in trial boots.
    follow = report.follow_up
    assert follow is not None
    assert (follow.without_working_slot, follow.mismatched, follow.paused_models) == (0, [], []), progress
    assert follow.on_new == follow.devices, progress
    assert follow.campaign["status"] == "completed", progress
    assert follow.faults["trial_cuts"] >= 1, progress
    assert follow.campaign["interrupted"] >= follow.faults["trial_cuts"], progress
    assert "boot" not in follow.campaign["failures"], follow.campaign["failures"]


async def test_the_ota_command_signs_offline_and_uploads(tmp_path, embedded_database, server_keys, unique, capsys):
    def ota(*argv: str) -> int:
        return run(build_parser().parse_args(["ota", *argv]))

    keys, artifact = tmp_path / "keys", tmp_path / "agent-3.1.0.zip"
    assert ota("build", "--version", "3.1.0", "--out", str(artifact)) == 0
    assert f"built {artifact}: agent 3.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="is not MAJOR"):
        ota("build", "--version", "three", "--out", str(tmp_path / "bad.zip"))
    assert ota("release-key", "--out", str(keys)) == 0
    public = (keys / "release.pub").read_text().strip()
    with pytest.raises(SystemExit, match="not overwriting"):
        ota("release-key", "--out", str(keys))
    capsys.readouterr()
    sign = ("sign", "--key", str(keys / "release.key"), "--artifact", str(artifact), "--name", "haodian-speaker")
    assert ota(*sign, "--version", "3.1.0", "--models", "HD-S1,HD-S2") == 0
    (tmp_path / "fw.manifest.json").write_text(capsys.readouterr().out)
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"t{unique}", ota_release_keys=[public])
    async with in_process_stack(settings, embedded_database, server_keys) as (_, server):
        with pytest.raises(SystemExit, match="401 请先登录"):
            await asyncio.to_thread(ota, "--server", server.base_url, "campaigns")
        viewer = ("--server", server.base_url, "--token", await server.auth.service_token("t-viewer", Role.OPS_VIEWER))
        with pytest.raises(SystemExit, match="403"):
            await asyncio.to_thread(ota, *viewer, "pause", "any")
        admin = ("--server", server.base_url, "--token", await server.auth.service_token("t-admin", Role.OPS_ADMIN))
        upload = (*admin, "upload", "--manifest", str(tmp_path / "fw.manifest.json"))
        assert await asyncio.to_thread(ota, *upload, "--artifact", str(artifact)) == 0
        assert "uploaded haodian-speaker 3.1.0" in capsys.readouterr().out
        assert await asyncio.to_thread(ota, *viewer, "campaigns") == 0
        assert "no campaigns" in capsys.readouterr().out
        with pytest.raises(SystemExit, match="404"):
            await asyncio.to_thread(ota, *viewer, "show", "nope")
        # Every policy field from the command line; after an abort, the never-offered apart.
        await register(server.pool, devices=[f"C{unique}{i}" for i in range(3)])
        start = (*admin, "start", "--release", "haodian-speaker", "--version", "3.1.0", "--window", "now")
        policy = ("--max-rate", "65536", "--device-timeout", "600", "--max-attempts", "5", "--wave-success", "0.9")
        pause = ("--pause-failure-rate", "0.05", "--pause-min-devices", "3", "--id", f"cli{unique}")
        assert await asyncio.to_thread(ota, *start, *policy, *pause) == 0
        made = (await server.ota.store.progress(f"cli{unique}")).policy
        assert (made.max_rate_bps, made.device_timeout_s, made.max_attempts) == (65536, 600, 5)
        assert (made.wave_success, made.pause_failure_rate, made.pause_min_devices) == (0.9, 0.05, 3)
        with pytest.raises(SystemExit):
            await asyncio.to_thread(ota, *start, "--wave-success", "1.5")
        capsys.readouterr()

        async def first_wave_offered() -> bool:
            return (await server.ota.store.progress(f"cli{unique}")).by_state.get("offered") == 1

        await eventually(first_wave_offered, what="the first wave offered")
        assert await asyncio.to_thread(ota, *admin, "abort", f"cli{unique}") == 0
        shown = capsys.readouterr().out
        assert "never offered 2" in shown, shown  # wave 1 is one device of three
        aborted = await server.ota.store.progress(f"cli{unique}")
        assert (aborted.not_offered, aborted.success_rate) == (2, 0.0)


async def test_the_hello_version_is_the_truth_and_offline_devices_are_reported_apart(
    tmp_path, embedded_database, release_key
):
    """No reports at all: the conductor's rounds go by what devices say in their hellos, and by
    whether they are online."""
    async with open_pool(embedded_database) as pool:
        await migrate(pool)
        store = await store_with_release(pool, tmp_path, release_key)
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO devices (device_id, model, firmware, online, hello_at) VALUES"
                " ('R1', 'HD-S1', '1.0.0', true, now()), ('R2', 'HD-S1', '1.0.0', true, now()),"
                " ('R3', 'HD-S1', '1.0.0', false, now()), ('R4', 'HD-S1', '2.0.0', true, now())"
            )
        policy = CampaignPolicy(waves=[1.0], window=None, device_timeout_s=10, pause_failure_rate=1.0)
        created = await store.create_campaign(
            release_name="haodian-speaker", version="2.0.0", selector=TargetSelector(), policy=policy, campaign_id="c"
        )
        assert created.targeted == 3  # R4 already runs 2.0.0
        offers = await store.plan_round()
        assert sorted(o.device_id for o in offers or []) == ["R1", "R2", "R3"]

        async with pool.connection() as conn:
            # R1 says hello on 2.0.0 (its reports were lost); R3 stays offline past the timeout.
            await conn.execute("UPDATE devices SET firmware = '2.0.0', hello_at = now() WHERE device_id = 'R1'")
            await conn.execute("UPDATE ota_targets SET updated_at = now() - interval '1 minute' WHERE device_id = 'R3'")
        assert await store.plan_round() == []
        progress = await store.progress("c")
        assert progress.by_state == {"committed": 1, "offered": 1, "unreachable": 1}
        assert progress.success_rate == 0.5  # unreachable devices apart

        async with pool.connection() as conn:
            # R1 comes back on 1.0.0 (rolled back later); R3 comes back online.
            await conn.execute(
                "UPDATE devices SET firmware = '1.0.0', hello_at = now() + interval '1 second' WHERE device_id = 'R1'"
            )
            await conn.execute("UPDATE devices SET online = true, hello_at = now() + interval '1 second'"
                               " WHERE device_id = 'R3'")  # fmt: skip
        offers = await store.plan_round()
        assert [o.device_id for o in offers or []] == ["R3"]
        progress = await store.progress("c")
        assert progress.by_state == {"rolled_back": 1, "offered": 2}
        assert progress.failures == {"boot": 1}
        retried = await store.act("c", "retry")
        assert retried.by_state == {"pending": 1, "offered": 2}
        assert [o.device_id for o in await store.plan_round() or []] == ["R1"]


async def test_a_campaign_targets_by_tag_and_place_from_the_imported_registry(tmp_path, embedded_database, release_key):
    header = "city_id,district_id,store_id,merchant_id,device_id,serial,model,tags\n"
    rows = ["BJ,WJ,S1,M1,T1,SN1,HD-S1,pilot;night", "BJ,WJ,S1,M2,T2,SN2,HD-S1,", "SH,PD,S2,M3,T3,SN3,HD-S1,pilot"]
    async with open_pool(embedded_database) as pool:
        await migrate(pool)
        bad = await import_registry(pool, header + "BJ,WJ,S1,M1,T9,SN9,HD-S1,bad tag\n", dry_run=True)
        assert "tag 'bad tag'" in bad.problems[0].errors[0]
        assert (await import_registry(pool, header + "\n".join(rows) + "\n", dry_run=False)).applied == 3
        async with pool.connection() as conn:
            await conn.execute("UPDATE devices SET firmware = '1.0.0'")
        store = await store_with_release(pool, tmp_path, release_key)
        pilot = await store.create_campaign(
            release_name="haodian-speaker", version="2.0.0", selector=TargetSelector(tags=["pilot"]),
            policy=CampaignPolicy(), campaign_id="pilot",
        )  # fmt: skip
        assert pilot.targeted == 2
        beijing_pilot = await store.create_campaign(
            release_name="haodian-speaker", version="2.0.0", selector=TargetSelector(tags=["pilot"], cities=["BJ"]),
            policy=CampaignPolicy(), campaign_id="bj-pilot",
        )  # fmt: skip
        assert beijing_pilot.targeted == 1


async def test_a_rebound_device_is_targeted_by_its_merchants_store(tmp_path, embedded_database, release_key):
    """A device moved to a merchant of another store belongs to that store for OTA targeting, as
    it does for the pages, reach and figures (one hierarchy for every query)."""
    header = "city_id,district_id,store_id,merchant_id,device_id,serial,model\n"
    rows = ["BJ,WJ,RS-A,RM-A,RB1,RBSN1,HD-S1", "BJ,WJ,RS-B,RM-B,RB2,RBSN2,HD-S1"]
    async with open_pool(embedded_database) as pool:
        await migrate(pool)
        assert (await import_registry(pool, header + "\n".join(rows) + "\n", dry_run=False)).applied == 2
        async with pool.connection() as conn:
            await conn.execute("UPDATE devices SET firmware = '1.0.0' WHERE device_id IN ('RB1', 'RB2')")
        # RB1 now serves a merchant of store RS-B.
        await Bindings(pool).bind("RB1", "RM-B", ttl=timedelta(seconds=60))
        store = await store_with_release(pool, tmp_path, release_key)
        store_b = await store.create_campaign(
            release_name="haodian-speaker", version="2.0.0", selector=TargetSelector(stores=["RS-B"]),
            policy=CampaignPolicy(), campaign_id="rebound-b",
        )  # fmt: skip
        assert store_b.targeted == 2
        with pytest.raises(OtaError, match="no device matches"):
            await store.create_campaign(
                release_name="haodian-speaker", version="2.0.0", selector=TargetSelector(stores=["RS-A"]),
                policy=CampaignPolicy(), campaign_id="rebound-a",
            )  # fmt: skip
