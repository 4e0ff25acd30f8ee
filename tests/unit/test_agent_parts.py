"""The agent's parts on their own, each with the ports it needs as fakes: a recording uplink, a
fake publisher for the link, a fake clock, a memory speaker. No EdgeAgent, no broker."""

import asyncio

import pytest

from edge_agent.announcer import Announcer
from edge_agent.boot import StateFolderBusy
from edge_agent.config import LiveConfig
from edge_agent.dedup import SeenIds
from edge_agent.downlink import Downlink
from edge_agent.hardware.audio import MemorySink
from edge_agent.merchant_settings import MerchantSettings
from edge_agent.outbox import Outbox
from edge_agent.stats import AgentStats
from edge_agent.uplink import DeviceUplink, RecordingUplink
from edge_agent.voice import ClipSpeaker, VoicePack
from firmware_protocols import topics
from firmware_protocols.messages import Ack, Announce, Event, Health, Hello
from firmware_protocols.signing import Verifier
from mqtt_link.errors import LinkDown
from mqtt_link.link import Delivery
from tests.unit.agent_kit import SERVER_KEY, announce, make_agent, make_config

pytestmark = pytest.mark.anyio


class FakePublisher:
    """The link as the uplink sees it: up or down, and what reached the broker."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.published: list[tuple[str, bytes, bool]] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if not self.connected.is_set():
            raise LinkDown("not connected")
        assert qos == 1, "the device's uplink is QoS 1"
        self.published.append((topic, payload, retain))


def hello(clock):
    return Hello(device_id="SPK1", ts=clock.now_ms(), model="HD-S1", serial="S1", firmware="0.1.0", boot_id="b")


def health(clock):
    return Health(device_id="SPK1", ts=clock.now_ms(), uptime_s=1, volume=5, queue_depth=0, played_total=0)


def kinds(publisher):
    return [topic.rsplit("/", 1)[1] for topic, _, _ in publisher.published]


async def test_uplink_keeps_what_the_link_cannot_take_and_sends_it_in_order_after_hello(tmp_path, clock):
    link = FakePublisher()
    async with DeviceUplink("SPK1", link, Outbox(tmp_path / "outbox.sqlite3"), clock, hello=lambda: hello(clock)) as up:
        await up.send(topics.Up.HEALTH, health(clock))  # offline: kept on disk
        await up.event("fault", part="modem")
        assert (len(up.outbox), link.published) == (2, [])
        link.connected.set()
        await up.on_connect()

        for _ in range(500):  # the flusher runs as its own task
            if not len(up.outbox):
                break
            await asyncio.sleep(0.01)
        assert len(up.outbox) == 0
        await up.send(topics.Up.HEALTH, health(clock))  # online and nothing waits: at once
    assert kinds(link) == ["presence", "hello", "health", "event", "health"]
    assert link.published[0][2] is True, "presence is retained"


async def test_announcer_takes_plays_and_acks_through_its_ports(tmp_path, clock):
    uplink, sink, stats = RecordingUplink("SPK1", clock), MemorySink(), AgentStats()
    config = LiveConfig(make_config(tmp_path))
    announcer = Announcer(
        "SPK1",
        uplink=uplink,
        speaker=ClipSpeaker(VoicePack.builtin(), sink),
        settings=MerchantSettings.of_device(config.current),
        seen=SeenIds(None),
        clock=clock,
        stats=stats,
        config=config,
    )
    message = announce(clock)
    delivery = Delivery("hd/v1/SPK1/down/announce", message.to_json())
    await announcer.take(message, delivery)
    await announcer.take(message, delivery)  # the broker's redelivery
    assert announcer.queued == 1
    assert await announcer.play_next()
    assert not await announcer.play_next()
    assert [r.text for r in sink.played] == ["微信收款十二点五元"]
    acks = uplink.of(topics.Up.ACK)
    assert all(isinstance(a, Ack) for a in acks)
    assert [a.status for a in acks] == ["duplicate", "played"]  # type: ignore[attr-defined]
    assert (stats.played, stats.duplicates) == (1, 1)


async def test_downlink_checks_each_signed_message_once_and_reports_the_malformed(clock):
    uplink, stats = RecordingUplink("SPK1", clock), AgentStats()
    downlink = Downlink("SPK1", Verifier([SERVER_KEY.public_key()]), uplink, stats)
    accepted: list[str] = []
    refused: list[str] = []

    async def accept(message: Announce, _: Delivery) -> None:
        accepted.append(message.payment_id)

    async def refuse(message: Announce, reason: str) -> None:
        refused.append(f"{message.payment_id}: {reason}")

    downlink.route(topics.Down.ANNOUNCE, Announce, accept, refuse)
    topic = "hd/v1/SPK1/down/announce"
    await downlink.deliver(Delivery(topic, announce(clock, "P1").to_json()))
    await downlink.deliver(Delivery(topic, announce(clock, "P2").model_copy(update={"amount_fen": 1}).to_json()))
    await downlink.deliver(Delivery(topic, b"{not json"))
    await downlink.deliver(Delivery("hd/v1/SPK1/down/newkind", b"{}"))  # a newer server's: logged only
    assert accepted == ["P1"]
    assert len(refused) == 1
    assert refused[0].startswith("P2: ")
    [event] = uplink.of(topics.Up.EVENT)
    assert isinstance(event, Event)
    assert (event.kind, event.detail["topic"]) == ("bad_message", topic)
    assert (stats.refused, stats.bad_messages) == (1, 1)


async def test_a_second_agent_on_the_same_folder_does_not_start_and_the_first_leaves_nothing_running(tmp_path, clock):
    before = asyncio.all_tasks()
    async with make_agent(tmp_path, clock, MemorySink()) as first:
        assert first.boot is not None
        with pytest.raises(StateFolderBusy, match="already runs"):
            async with make_agent(tmp_path, clock, MemorySink()):
                pass
    assert asyncio.all_tasks() == before
