"""The announce decisions of the edge agent, with fake speaker and clock, no broker.

Announces go in through the agent's downlink, as the link hands them over; without a broker
every uplink lands in the agent's outbox, which is where these tests read the acks and events
from.
"""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from edge_agent.hardware.audio import MemorySink
from edge_agent.hardware.errors import Unreachable
from edge_agent.hardware.modem import SimulatedModem
from edge_agent.hardware.printer import FakePrinter
from edge_agent.hardware.tts_chip import FakeTtsChip
from edge_agent.voice import ChipSpeaker
from firmware_protocols import topics
from firmware_protocols.signing import Signer, encode_public_key
from tests.unit.agent_kit import SERVER_KEY, announce, deliver, make_agent, play_all, uplinks

pytestmark = pytest.mark.anyio


async def test_signed_announce_is_played_once_and_acked(tmp_path, clock):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    await deliver(agent, announce(clock))
    await play_all(agent)
    assert [r.text for r in sink.played] == ["微信收款十二点五元"]
    assert sink.played[0].duration_s > 1.0
    [(kind, ack)] = uplinks(agent)
    assert kind == "ack"
    assert (ack["status"], ack["payment_id"], ack["text"]) == ("played", "P1", "微信收款十二点五元")

    await deliver(agent, announce(clock))  # broker redelivery / server retry
    await play_all(agent)
    assert len(sink.played) == 1
    assert [ack["status"] for _, ack in uplinks(agent)] == ["duplicate"]


async def test_dedup_survives_a_restart(tmp_path, clock):
    sink = MemorySink()
    first = make_agent(tmp_path, clock, sink)
    await deliver(first, announce(clock))
    second = make_agent(tmp_path, clock, sink)
    await deliver(second, announce(clock))
    assert second.announcer.queued == 0
    assert [ack["status"] for _, ack in uplinks(second)] == ["duplicate"]


async def test_stale_announce_is_not_played_late(tmp_path, clock):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    stale = announce(clock, ttl_s=30)
    clock.advance(31_000)
    await deliver(agent, stale)
    assert agent.announcer.queued == 0
    assert [ack["status"] for _, ack in uplinks(agent)] == ["expired"]


@pytest.mark.parametrize(
    "forge",
    [
        lambda a: a.model_copy(update={"amount_fen": 999900}),  # amount changed after signing
        lambda a: a.model_copy(update={"sig": ""}),  # signature stripped
        lambda a: Signer(Ed25519PrivateKey.generate()).sign(a),  # someone else's key
    ],
)
async def test_forged_announces_are_refused_and_reported(tmp_path, clock, forge):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    await deliver(agent, forge(announce(clock)))
    assert agent.announcer.queued == 0
    sent = uplinks(agent)
    assert [kind for kind, _ in sent] == ["ack", "event"]
    assert sent[0][1]["status"] == "refused"
    assert sent[1][1]["kind"] == "announce_refused"
    assert agent.stats.refused == 1


async def test_announce_for_another_device_is_refused(tmp_path, clock):
    agent = make_agent(tmp_path, clock, MemorySink())
    await deliver(agent, announce(clock, device_id="SPK2"))
    assert agent.announcer.queued == 0
    assert uplinks(agent)[0][1]["status"] == "refused"


async def test_malformed_announce_is_logged_and_reported(tmp_path, clock):
    agent = make_agent(tmp_path, clock, MemorySink())
    with capture_logs() as logs:
        await deliver(agent, b'{"type": "announce"', topics.Down.ANNOUNCE)
    assert agent.announcer.queued == 0
    assert any(e["event"] == "malformed message dropped" and e["topic"] == "hd/v1/SPK1/down/announce" for e in logs)
    [(kind, event)] = uplinks(agent)
    assert (kind, event["kind"]) == ("event", "bad_message")


async def test_announcements_play_in_arrival_order(tmp_path, clock):
    sink = MemorySink()
    agent = make_agent(tmp_path, clock, sink)
    for i, fen in enumerate([100, 200, 300]):
        await deliver(agent, announce(clock, payment_id=f"P{i}", amount_fen=fen))
    await play_all(agent)
    assert [r.text for r in sink.played] == ["微信收款一元", "微信收款二元", "微信收款三元"]


async def test_chip_speaker_and_printer_ports(tmp_path, clock):
    """Speech through the TTS chip port and a receipt on the printer port; a printer out of paper
    loses no announcement, it is reported."""
    chip, printer = FakeTtsChip(), FakePrinter()
    config = AgentConfig(
        device_id="SPK1",
        broker_url="mqtt://127.0.0.1:9",
        state_dir=tmp_path,
        server_keys=[encode_public_key(SERVER_KEY.public_key())],
        volume=4,
    )
    agent = EdgeAgent(config, speaker=ChipSpeaker(chip), modem=SimulatedModem(seed=1), printer=printer, clock=clock)
    await deliver(agent, announce(clock, "P1"))
    await play_all(agent)
    assert chip.spoken == [("微信收款十二点五元", 4)]
    assert len(printer.printed) == 1
    assert "金额: 12.50 元".encode("gbk") in printer.printed[0]
    printer.state = "paper_out"
    await deliver(agent, announce(clock, "P2"))
    await play_all(agent)
    sent = uplinks(agent)
    assert [body["status"] for kind, body in sent if kind == "ack"] == ["played", "played"]
    assert [body["kind"] for kind, body in sent if kind == "event"] == ["receipt_failed"]
    assert (agent.stats.receipts_printed, agent.stats.receipt_failures) == (1, 1)


async def test_part_states_in_health_and_change_events(tmp_path, clock):
    chip, printer = FakeTtsChip(), FakePrinter()
    printer.state = "cover_open"
    config = AgentConfig(
        device_id="SPK1",
        broker_url="mqtt://127.0.0.1:9",
        state_dir=tmp_path,
        server_keys=[encode_public_key(SERVER_KEY.public_key())],
    )
    agent = EdgeAgent(config, speaker=ChipSpeaker(chip), modem=SimulatedModem(seed=1), printer=printer, clock=clock)
    health = await agent.reporter.health()
    assert (health.tts, health.printer, health.registration, health.modem) == ("idle", "cover_open", "home", "ok")
    await agent.reporter.check_parts()  # a bad part at start is reported at once
    chip.failure = Unreachable("gone")
    printer.state = "ok"
    await agent.reporter.check_parts()
    events = [(body["kind"], body["detail"]) for kind, body in uplinks(agent) if kind == "event"]
    assert events == [
        ("fault", {"part": "printer", "state": "cover_open", "was": None}),
        ("fault", {"part": "audio", "state": "fail", "was": "ok"}),
        ("fault", {"part": "tts", "state": "unreachable", "was": "ok"}),
        ("recovered", {"part": "printer", "state": "ok", "was": "cover_open"}),
    ]
