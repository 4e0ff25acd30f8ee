"""The agent around the updater: offers must carry the server's signature, an accepted offer runs
to a restart into the new slot, and a new version that cannot reach the broker rolls back."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.clock import FakeClock
from edge_agent.hardware.audio import MemorySink
from firmware_protocols import topics
from firmware_protocols.messages import OtaOffer
from firmware_protocols.signing import Signer, encode_public_key
from tests.unit.agent_kit import SIGNER, deliver, make_agent, uplinks
from tests.unit.test_ota_device import NOW, artifact_server, offer_of

pytestmark = pytest.mark.anyio

RELEASE_KEY = Ed25519PrivateKey.generate()  # made for this run: test-only


def signed_offer(signer: Signer = SIGNER, **changes) -> OtaOffer:
    unsigned = offer_of(RELEASE_KEY).model_copy(update={"device_id": "SPK1", "key_id": signer.key_id, **changes})
    return signer.sign(unsigned)


def agent(tmp_path, http_transport=None, **changes):
    return make_agent(
        tmp_path,
        FakeClock(NOW),
        MemorySink(),
        http_transport,
        firmware="1.4.2",
        release_keys=[encode_public_key(RELEASE_KEY.public_key())],
        ota_retry_initial_s=0.01,
        ota_health_timeout_s=0.2,
        ota_payload="image",
        **changes,
    )


async def test_an_offer_not_signed_by_the_server_is_refused(tmp_path):
    forged = signed_offer(Signer(Ed25519PrivateKey.generate()))
    stale = signed_offer(issued_at=NOW - 7200_000, ttl_s=3600)
    async with agent(tmp_path) as a:
        await deliver(a, forged)
        await deliver(a, stale)
        await deliver(a, b'{"type": "ota"}', topics.Down.OTA)
        sent = uplinks(a)
    refused = [m for kind, m in sent if kind == "event" and m["kind"] == "ota_refused"]
    assert [("unknown signing key" in r["detail"]["reason"], "expired" in r["detail"]["reason"]) for r in refused] == [
        (True, False),
        (False, True),
    ]
    assert any(kind == "event" and m["kind"] == "bad_message" for kind, m in sent)
    assert not any(kind == "ota" for kind, _ in sent)
    assert a.stats.refused == 2


async def test_an_update_that_cannot_reach_the_broker_rolls_back_to_the_old_slot(tmp_path):
    async with agent(tmp_path, artifact_server()) as a:
        assert (a.config.firmware, a.config.slot) == ("1.4.2", "a")
        await deliver(a, signed_offer())
        await asyncio.wait_for(a.restart_requested.wait(), 10)
        states = [m["state"] for kind, m in uplinks(a) if kind == "ota"]
    assert states[-1] == "rebooting"
    async with agent(tmp_path) as trial:  # the restart into the new slot, as a trial
        assert (trial.config.firmware, trial.config.slot, trial.boot.reason) == ("1.5.0", "b", "ota")
        await asyncio.wait_for(trial.restart_requested.wait(), 10)  # its broker is not there
        reports = [m for kind, m in uplinks(trial) if kind == "ota"]
    assert reports[-1]["state"] == "rolled_back"
    assert reports[-1]["failure"] == "health_check"
    assert "broker not reached" in reports[-1]["reason"]
    async with agent(tmp_path) as back:
        assert (back.config.firmware, back.config.slot, back.boot.reason) == ("1.4.2", "a", "rollback")
