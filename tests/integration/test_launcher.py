"""The launcher with real processes (issue 29): how a trial slot's program ends decides what
the boot counter does. A crash drops the trial with the program's own last words; a hang is
stopped at the trial deadline and dropped; a kill from outside is an interruption, booted again.

The trial slots here hold a stand-in `edge_agent` package (a program that crashes or hangs),
as a broken build would; after a drop the factory slot runs the real agent, with no broker to
reach."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.config import AgentConfig
from edge_agent.launcher import Launcher
from edge_agent.ota.slots import BootControl
from edge_agent.state_files import read_json
from firmware_protocols.signing import encode_public_key
from mqtt_link.tasks import cancel_and_wait
from tests.integration.conftest import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def trial_of(state: Path, program: str) -> None:
    """Slot b holds an `edge_agent` whose `python -m edge_agent` is `program`, booted next as a trial."""
    control = BootControl(state, factory_version="1.0.0")
    folder = control.begin_install("b")
    package = folder / "app" / "edge_agent"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "__main__.py").write_text(program, encoding="utf-8")
    control.finish_install("b", "1.1.0")
    control.try_next("b")


SERVER_KEY = encode_public_key(Ed25519PrivateKey.generate().public_key())  # made for this run: test-only


def launcher(tmp_path: Path, **config: object) -> Launcher:
    settings = AgentConfig(
        device_id="LNCH1",
        server_keys=[SERVER_KEY],
        broker_url="mqtt://127.0.0.1:9",  # nobody there: the factory agent just keeps trying
        state_dir=tmp_path / "state",
        firmware="1.0.0",
        **config,  # type: ignore[arg-type]
    )
    options = ["--device-id", "LNCH1", "--server-key", SERVER_KEY, "--state-dir", str(tmp_path / "state")]
    return Launcher(settings, [*options, "--broker-url", "mqtt://127.0.0.1:9", "--audio-dir", str(tmp_path / "audio")])


def env(tmp_path: Path) -> dict:
    return read_json(tmp_path / "state" / "bootctl.json") or {}


async def _dropped(tmp_path: Path) -> bool:
    found = env(tmp_path)
    return found.get("active") == "a" and found.get("slots", {}).get("b", {}).get("state") == "bad"


async def test_a_trial_that_crashes_is_dropped_with_its_last_words(tmp_path):
    trial_of(tmp_path / "state", 'raise RuntimeError("broken build: cannot start")\n')
    running = asyncio.create_task(launcher(tmp_path).run())
    try:
        await eventually(lambda: _dropped(tmp_path), timeout_s=60, what="the crashed trial dropped")
    finally:
        await cancel_and_wait(running)
    assert "crashed: exit 1: RuntimeError: broken build: cannot start" in (env(tmp_path).get("dropped") or "")
    assert not env(tmp_path).get("dropped_interrupted")


async def test_a_trial_killed_from_outside_boots_again_and_one_that_hangs_is_stopped(tmp_path):
    trial_of(tmp_path / "state", "import time\n\ntime.sleep(3600)\n")
    boots = launcher(tmp_path, ota_trial_deadline_s=10.0)
    running = asyncio.create_task(boots.run())
    try:

        async def trial_running() -> bool:
            return env(tmp_path).get("trial_boot") == "b" and boots.process is not None

        await eventually(trial_running, timeout_s=30, what="the trial boot started")
        assert boots.process is not None
        first = boots.process.pid
        os.kill(first, signal.SIGKILL)  # kill -9 of the agent alone, from outside

        async def booted_again() -> bool:
            again = boots.process
            return env(tmp_path).get("interrupted") == 1 and again is not None and again.pid != first

        await eventually(booted_again, timeout_s=30, what="the interrupted trial booted again")
        assert env(tmp_path)["trial"] == "b"
        await eventually(lambda: _dropped(tmp_path), timeout_s=60, what="the hung trial stopped and dropped")
    finally:
        await cancel_and_wait(running)
    assert "hung: not committed within 10 s" in (env(tmp_path).get("dropped") or "")
    assert boots.process is not None
    assert boots.process.returncode is not None  # stopping the launcher stopped its agent
