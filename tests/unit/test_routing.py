"""The link's router: every consumer's one way from a topic and payload to a validated message."""

import json

import pytest
from structlog.testing import capture_logs

from firmware_protocols.messages import Ack, Health, Settings
from firmware_protocols.topics import Direction, Down, Up
from mqtt_link.link import Delivery
from mqtt_link.routing import Inbound, Rejected, Router

pytestmark = pytest.mark.anyio


class FakeReceipt:
    def __init__(self) -> None:
        self.acked = 0

    def ack(self) -> bool:
        self.acked += 1
        return True


def ack_payload(device_id="SPK1", **changes):
    fields = {"device_id": device_id, "ts": 1, "payment_id": "P1", "status": "played", "received_at": 1}
    return json.dumps({**fields, **changes}).encode()


class Recorder:
    def __init__(self) -> None:
        self.taken: list[Inbound] = []
        self.rejected: list[Rejected] = []

    async def take(self, inbound: Inbound) -> None:
        self.taken.append(inbound)

    async def reject(self, rejected: Rejected) -> None:
        self.rejected.append(rejected)


def server_router(recorder: Recorder) -> Router:
    router = Router("bridge", Direction.UP, on_reject=recorder.reject)
    router.route(Up.ACK, Ack, recorder.take)
    return router


async def test_a_valid_message_reaches_its_handler_validated_with_its_delivery():
    recorder = Recorder()
    router = server_router(recorder)
    delivery = Delivery("hd/v1/SPK1/up/ack", ack_payload(), FakeReceipt())
    await router.deliver(delivery)
    [inbound] = recorder.taken
    assert isinstance(inbound.message, Ack)
    assert (inbound.topic.device_id, inbound.topic.kind, inbound.delivery) == ("SPK1", Up.ACK, delivery)
    assert delivery.receipt.acked == 0  # the handler acknowledges once it has stored it
    assert (router.stats.received, router.stats.rejected) == (1, 0)


@pytest.mark.parametrize(
    ("topic", "payload", "stage", "reason"),
    [
        ("hd/v1/SPK1/up/nonsense", ack_payload(), "topic", "unknown up message kind"),
        ("hd/v1/SPK1/up/health", ack_payload(), "topic", "not handled here"),
        ("elsewhere/SPK1", ack_payload(), "topic", "not of the form"),
        ("hd/v1/SPK1/up/ack", b'{"type": "ack"', "payload", "not UTF-8 JSON"),
        ("hd/v1/SPK1/up/ack", ack_payload(status="loud"), "payload", "status"),
        ("hd/v1/SPK1/up/ack", ack_payload(device_id="SPK2"), "payload", "does not match the topic"),
    ],
)
async def test_what_fails_a_step_is_rejected_logged_handed_to_the_hook_and_acknowledged(topic, payload, stage, reason):
    recorder = Recorder()
    router = server_router(recorder)
    receipt = FakeReceipt()
    with capture_logs() as logs:
        await router.deliver(Delivery(topic, payload, receipt))
    assert recorder.taken == []
    [rejected] = recorder.rejected
    assert rejected.stage == stage
    assert reason in str(rejected.error)
    assert receipt.acked == 1, "a message that cannot be taken must not come back"
    assert router.stats.rejected == 1
    [line] = [e for e in logs if e["event"] == "malformed message dropped"]
    assert (line["consumer"], line["topic"], line["stage"]) == ("bridge", topic, stage)


async def test_a_failing_reject_hook_still_acknowledges():
    async def broken(_: Rejected) -> None:
        raise RuntimeError("quarantine down")

    router = Router("ingest", Direction.UP, on_reject=broken)
    router.route(Up.HEALTH, Health, Recorder().take)
    receipt = FakeReceipt()
    with pytest.raises(RuntimeError):
        await router.deliver(Delivery("hd/v1/SPK1/up/health", b"[]", receipt))
    assert receipt.acked == 1


async def test_a_device_router_ignores_other_subtrees_and_its_own_uplink():
    recorder = Recorder()
    router = Router("agent", Direction.DOWN, device_id="SPK1", on_reject=recorder.reject)
    router.route(Down.SETTINGS, Settings, recorder.take, retained=True)
    for topic in ("hd/v1/SPK2/down/settings", "hd/v1/SPK1/up/health"):
        await router.deliver(Delivery(topic, b"{}"))
    assert (recorder.taken, recorder.rejected, router.stats.ignored) == ([], [], 2)


async def test_an_empty_payload_on_a_retained_route_is_a_cleared_message_not_a_bad_one():
    recorder = Recorder()
    router = Router("agent", Direction.DOWN, device_id="SPK1", on_reject=recorder.reject)
    router.route(Down.SETTINGS, Settings, recorder.take, retained=True)
    receipt = FakeReceipt()
    await router.deliver(Delivery("hd/v1/SPK1/down/settings", b"", receipt))
    assert (recorder.taken, recorder.rejected, receipt.acked) == ([], [], 1)


def test_a_kind_is_routed_once():
    router = Router("ota", Direction.UP)
    router.route(Up.OTA, Ack, Recorder().take)
    with pytest.raises(ValueError, match="routed already"):
        router.route(Up.OTA, Ack, Recorder().take)
