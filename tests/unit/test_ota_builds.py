"""Agent builds as update artifacts (issue 29): a build of this checkout installs into the slot
the launcher runs, anything else is refused before the slot is touched, and a download cut by
the power keeps only what reached the flash and still resumes to an artifact that verifies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import zipfile
from pathlib import Path

import httpx
import pytest

from edge_agent.ota import download as download_module
from edge_agent.ota.builds import BuildError, build_agent, read_build, unpack
from edge_agent.ota.slots import BootControl
from firmware_protocols.messages import OtaFailure, OtaState
from tests.unit.test_ota_device import Host, _until, artifact_server, offer_of, release_key, run_until_restart, updater

pytestmark = pytest.mark.anyio
__all__ = ["release_key"]  # the module's fixture, used here

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build_150(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("build") / "agent-1.5.0.zip"
    build_agent(CHECKOUT, "1.5.0", out)
    return out.read_bytes()


def test_a_build_holds_the_agent_packages_and_is_the_same_bytes_from_the_same_sources(tmp_path, build_150):
    again = tmp_path / "again.zip"
    build_agent(CHECKOUT, "1.5.0", again)
    assert again.read_bytes() == build_150  # reproducible: fixed times, sorted files
    with zipfile.ZipFile(again) as archive:
        names = set(archive.namelist())
        stamp = json.loads(archive.read("edge_agent/BUILD.json"))
    assert {"haodian-build.json", "edge_agent/__main__.py", "firmware_protocols/__init__.py"} <= names
    assert "mqtt_link/link.py" in names
    assert any(n.startswith("edge_agent/voices/") for n in names)
    assert not any("__pycache__" in n or n.startswith(("fleet_server/", "haodian/")) for n in names)
    assert stamp["version"] == "1.5.0"
    assert read_build(again).build_id == stamp["build_id"]
    with pytest.raises(BuildError, match="not an agent build"):
        read_build(Path(__file__))


async def test_an_agent_build_is_unpacked_into_the_slot_the_launcher_runs(tmp_path, release_key, build_150):
    host = Host()
    u = updater(
        tmp_path, release_key, host, transport=artifact_server(data=build_150, cut_at=[40_000]), payload="agent"
    )
    await run_until_restart(u, host, offer_of(release_key, data=build_150))
    app = tmp_path / "slots" / "b" / "app"
    assert json.loads((app / "edge_agent" / "BUILD.json").read_text())["version"] == "1.5.0"
    assert (app / "edge_agent" / "agent.py").read_bytes() == (CHECKOUT / "edge_agent" / "agent.py").read_bytes()
    choice = BootControl(tmp_path, factory_version="1.4.2").next_boot()
    assert (choice.slot, choice.version, choice.trial) == ("b", "1.5.0", True)


@pytest.mark.parametrize("case", ["not a build", "another version"])
async def test_an_artifact_that_is_not_a_build_of_the_offered_version_never_reaches_a_slot(
    tmp_path, release_key, build_150, case
):
    # The all-zero image the outside testers committed on six devices; a build of 1.5.0 as 1.6.0.
    data = b"\0" * 50_000 if case == "not a build" else build_150
    host = Host()
    u = updater(tmp_path, release_key, host, transport=artifact_server(data=data), payload="agent")
    await u.offer(offer_of(release_key, data=data, version="1.5.0" if case == "not a build" else "1.6.0"))
    await asyncio.wait_for(_until(lambda: bool(host.reports) and host.reports[-1].state.terminal), 10)
    await u.close()
    last = host.reports[-1]
    assert (last.state, last.failure) == (OtaState.FAILED, OtaFailure.VERIFY)
    assert ("not an agent build" if case == "not a build" else "build of 1.5.0") in (last.reason or "")
    assert not (tmp_path / "slots" / "b").exists()
    assert host.restarts == []


async def test_a_power_cut_mid_download_keeps_what_was_synced_and_the_resume_verifies(
    tmp_path, release_key, build_150, monkeypatch
):
    """The power goes while the download runs: the flash keeps what was fsynced and may hold
    zeros after it. What fsync reached is measured by a shim around os.fsync, not taken from the
    updater's own record; the next boot resumes from there and the artifact verifies."""
    data = build_150 * 4  # an image of a few MB: many syncs before the cut
    part = tmp_path / "ota" / "artifact.part"
    synced_sizes: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        done = os.fstat(fd)
        if part.exists() and os.path.samestat(done, part.stat()):
            synced_sizes.append(done.st_size)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(download_module, "SYNC_BYTES", 64 * 1024)
    gate = asyncio.Event()
    cut_at = len(data) * 2 // 3
    served: list[int] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        start = int(request.headers.get("range", "bytes=0-").removeprefix("bytes=").rstrip("-") or 0)

        async def body():
            for offset in range(start, len(data), 16 * 1024):
                if offset >= cut_at and not served:
                    gate.set()
                    await asyncio.sleep(3600)  # the power goes while bytes are still on their way
                yield data[offset : offset + 16 * 1024]

        if start:
            served.append(start)
        headers = {"etag": f'"{hashlib.sha256(data).hexdigest()}"', "content-length": str(len(data) - start)}
        if start:
            headers["content-range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return httpx.Response(206 if start else 200, headers=headers, content=body())

    host = Host()
    offer = offer_of(release_key, data=data)
    u = updater(tmp_path, release_key, host, transport=httpx.MockTransport(slow))
    await u.offer(offer)
    await asyncio.wait_for(gate.wait(), 10)
    # The moment of the cut: the flash holds what fsync reached, and after it zeros (blocks the
    # file system had allocated but not written).
    on_flash = max([0, *synced_sizes])
    mark = (tmp_path / "ota" / "artifact.part.synced").read_bytes()
    written = part.stat().st_size
    await u.close()  # (the process is gone; what its close wrote is undone below)
    part.write_bytes(part.read_bytes()[:on_flash] + b"\0" * (written - on_flash + 4096))
    (tmp_path / "ota" / "artifact.part.synced").write_bytes(mark)
    assert 0 < on_flash < len(data)

    again = Host()
    await run_until_restart(updater(tmp_path, release_key, again, transport=httpx.MockTransport(slow)), again)
    assert served  # resumed, not started over ...
    assert 0 < served[0] <= on_flash
    assert (tmp_path / "slots" / "b" / "payload.bin").read_bytes() == data  # ... and what was installed verifies
    assert OtaFailure.VERIFY not in [r.failure for r in again.reports]


@pytest.mark.parametrize("name", ["../outside.py", "/etc/haodian.py", "edge_agent/../../up.py"])
async def test_a_build_that_would_write_outside_its_slot_is_refused(tmp_path, build_150, name):
    crafted = tmp_path / "crafted.zip"
    crafted.write_bytes(build_150)
    with zipfile.ZipFile(crafted, "a") as archive:
        archive.writestr(name, b"print('owned')\n")
    slot = tmp_path / "slot" / "app"
    slot.mkdir(parents=True)
    with pytest.raises(BuildError, match="unsafe path"):
        await unpack(crafted, slot)
    assert not (tmp_path / "outside.py").exists()
    assert not (tmp_path / "up.py").exists()
    assert list(slot.iterdir()) == []  # every name is checked before anything is written
