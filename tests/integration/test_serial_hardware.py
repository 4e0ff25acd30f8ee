"""The agent's real serial code (pyserial, its own threads) against virtual peers on pseudo-terminals.

Each peer is a real pty: bytes go through the kernel's tty layer exactly as with a UART. The
last tests run the whole agent over a real broker (the machine's Mosquitto) with its speech on
a virtual TTS chip that vanishes, comes back and sends garbage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from edge_agent.agent import EdgeAgent
from edge_agent.bootstrap import open_hardware
from edge_agent.config import AgentConfig
from edge_agent.hardware.errors import HardwareError, Unreachable
from edge_agent.hardware.modem import SerialModem
from edge_agent.hardware.printer import SerialPrinter
from edge_agent.hardware.serial_line import SerialLine
from edge_agent.hardware.tts_chip import SerialTtsChip
from firmware_protocols import topics
from firmware_protocols.serial import escpos, tts
from firmware_protocols.signing import Signer, encode_public_key
from simulators.serial_peers import VirtualModem, VirtualPrinter, VirtualTtsChip
from tests.integration.conftest import eventually, signed_announce

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def line_factory() -> AsyncIterator[list[SerialLine]]:
    lines: list[SerialLine] = []
    yield lines
    for line in lines:
        await line.close()


def open_line(lines: list[SerialLine], path: Path, name: str) -> SerialLine:
    line = SerialLine(str(path), baudrate=9600, name=name)
    lines.append(line)
    return line


# -- TTS chip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(tts.Dialect))
async def test_tts_chip_speaks_reports_state_and_waits_while_busy(tmp_path, line_factory, dialect):
    async with VirtualTtsChip(tmp_path / "tts", dialect=dialect, seconds_per_char=0.02) as peer:
        chip = SerialTtsChip(open_line(line_factory, peer.link, "tts"), dialect)
        assert await chip.state() == "idle"
        await chip.speak("微信收款十二点五元", volume=10)
        assert await chip.state() == "busy"  # 9 characters at 20 ms each
        await chip.speak("支付宝到账五元", volume=5)
        # The second frame went out only after the first utterance had finished.
        first, second = peer.spoken
        assert (first.text, first.tags) == ("微信收款十二点五元", {"v": dialect.max_volume_tag})
        assert (second.text, second.tags["v"]) == ("支付宝到账五元", round(5 * dialect.max_volume_tag / 10))
        assert second.at - first.at >= 9 * 0.02 * 0.9


async def test_tts_chip_that_stays_busy_or_stops_answering_is_reported(tmp_path, line_factory):
    async with VirtualTtsChip(tmp_path / "tts") as peer:
        chip = SerialTtsChip(
            open_line(line_factory, peer.link, "tts"), tts.Dialect.SYN6288, answer_timeout_s=0.3, max_busy_s=0.5
        )
        peer.stuck_busy = True
        with pytest.raises(HardwareError, match="stayed busy"):
            await chip.speak("收款成功", volume=5)
        peer.stuck_busy, peer.silent = False, True
        with pytest.raises(Unreachable, match="did not answer"):
            await chip.speak("收款成功", volume=5)
        assert await chip.state() == "unreachable"
        peer.silent = False
        await chip.speak("收款成功", volume=5)
        assert [u.text for u in peer.spoken] == ["收款成功"]


async def test_tts_chip_garbage_on_the_line_is_logged_and_skipped(tmp_path, line_factory):
    async with VirtualTtsChip(tmp_path / "tts", seed=7) as peer:
        chip = SerialTtsChip(open_line(line_factory, peer.link, "tts"), tts.Dialect.SYN6288)
        assert await chip.state() == "idle"
        # Noise arriving while the chip answers: our line discards what was there before a
        # request, so inject it from the peer while the request is in flight.
        original = peer._handle

        def noisy(frame: tts.Frame) -> None:
            peer.send(b"\x00\x13\x99")
            original(frame)

        peer._handle = noisy
        with capture_logs() as logs:
            await chip.speak("收款成功", volume=5)
        assert [u.text for u in peer.spoken] == ["收款成功"]
        assert any(entry["event"] == "garbage from TTS chip ignored" for entry in logs)


async def test_serial_line_reopens_a_peer_that_vanished_and_came_back(tmp_path, line_factory):
    async with VirtualTtsChip(tmp_path / "tts") as peer:
        chip = SerialTtsChip(open_line(line_factory, peer.link, "tts"), tts.Dialect.SYN6288)
        await chip.speak("一", volume=5)
        old_pty = peer.pty_name
        peer.vanish()
        assert not peer.link.exists()
        with pytest.raises(Unreachable):
            await chip.speak("二", volume=5)
        peer.appear()
        assert peer.link.exists()

        async def back() -> bool:
            return await chip.state() == "idle"

        await eventually(back, timeout_s=15, what="the TTS line to reopen")
        await chip.speak("三", volume=5)
        assert [u.text for u in peer.spoken] == ["一", "三"]
        assert peer.pty_name != old_pty or peer.link.exists()


# -- modem ---------------------------------------------------------------------------------------


async def test_modem_status_from_at_commands(tmp_path, line_factory):
    async with VirtualModem(tmp_path / "modem") as peer:
        modem = SerialModem(open_line(line_factory, peer.link, "modem"))
        status = await modem.status()
        assert status.reachable
        assert (status.signal_dbm, status.signal_bars, status.registration) == (-71, 4, "home")
        assert (status.cell.rat, status.cell.mcc, status.cell.area, status.cell.cell_id) == (
            "LTE",
            460,
            "D509",
            "80D413D",
        )
        assert (status.iccid, status.imei, status.model) == ("89860025128306012474", "867698041234566", "EC200U")
        assert status.error is None
        assert "AT+CSQ" in peer.commands


async def test_modem_faults_show_in_its_status(tmp_path, line_factory):
    async with VirtualModem(tmp_path / "modem") as peer:
        modem = SerialModem(open_line(line_factory, peer.link, "modem"))
        await modem.status()
        with capture_logs() as logs:
            peer.set_registered(False)  # sends +CREG: 2 / +CEREG: 2 URCs
            peer.state.signal_dbm = -105
            status = await modem.status()
        assert (status.registration, status.signal_bars, status.cell.rat) == ("searching", 1, None)
        assert any(entry.get("urc") == "+CEREG: 2" for entry in logs)
        peer.state.sim = False
        status = await modem.status()
        assert status.iccid is None
        assert status.error is not None
        assert "+CME ERROR 10" in status.error
        peer.send_garbage(40)
        peer.state.sim, peer.state.signal_dbm = True, -61
        peer.set_registered(True)
        status = await modem.status()
        assert (status.registration, status.signal_bars, status.iccid) == ("home", 5, "89860025128306012474")


async def test_modem_that_vanishes_is_unreachable_then_back(tmp_path, line_factory):
    async with VirtualModem(tmp_path / "modem") as peer:
        modem = SerialModem(open_line(line_factory, peer.link, "modem"))
        assert (await modem.status()).reachable
        peer.vanish()
        status = await modem.status()
        assert not status.reachable
        assert status.error
        peer.appear()

        async def back() -> bool:
            return (await modem.status()).reachable

        await eventually(back, timeout_s=15, what="the modem line to reopen")


# -- printer -------------------------------------------------------------------------------------


def receipt() -> bytes:
    return escpos.Receipt().init().chinese().line("微信收款 12.50元").chinese(on=False).line("PAY-1").cut().encode()


async def test_printer_prints_and_reports_paper_and_cover(tmp_path, line_factory):
    async with VirtualPrinter(tmp_path / "printer") as peer:
        printer = SerialPrinter(open_line(line_factory, peer.link, "printer"))
        assert (await printer.status()).state == "ok"
        await printer.print_receipt(receipt())
        await eventually(_async(lambda: bool(peer.receipts)), timeout_s=5, what="the receipt")
        assert peer.receipts == [["微信收款 12.50元", "PAY-1"]]
        peer.faults.paper_out()
        assert (await printer.status()).state == "paper_out"
        with pytest.raises(HardwareError, match="paper_out"):
            await printer.print_receipt(receipt())
        peer.faults.paper_out(out=False)
        peer.faults.cover_open()
        assert (await printer.status()).state == "cover_open"
        peer.silent = True
        assert (await printer.status()).state == "unreachable"


def _async(check):
    async def run() -> bool:
        return bool(check())

    return run


# -- the whole agent -----------------------------------------------------------------------------


@pytest.fixture
async def broker_agent(tmp_path, machine_mosquitto, unique):
    """An agent whose speech, modem and printer are virtual peers on ptys, on the machine's Mosquitto."""
    host, port = machine_mosquitto
    key = Ed25519PrivateKey.generate()
    device_id = f"PTY{unique}"
    peers = tmp_path / "peers"
    config = AgentConfig(
        device_id=device_id,
        broker_url=f"mqtt://{host}:{port}",
        server_keys=[encode_public_key(key.public_key())],
        state_dir=tmp_path / "state",
        health_interval_s=0.2,
        tts_port=str(peers / "tts"),
        modem_port=str(peers / "modem"),
        printer_port=str(peers / "printer"),
    )
    async with (
        VirtualTtsChip(peers / "tts", seed=3) as chip,
        VirtualModem(peers / "modem") as modem,
        VirtualPrinter(peers / "printer") as printer,
        open_hardware(config, audio_dir=tmp_path / "audio") as hardware,
        EdgeAgent(config, **hardware.ports()) as agent,
        aiomqtt.Client(host, port, identifier=f"test-{unique}") as client,
    ):
        await client.subscribe(f"hd/v1/{device_id}/up/#", qos=1)
        uplinks = Uplinks()
        collector = asyncio.create_task(uplinks.collect(client))
        await agent.wait_connected(10)
        await uplinks.wait("health")  # every part has been looked at once
        yield agent, Signer(key), client, uplinks, (chip, modem, printer)
        collector.cancel()


async def publish_announce(client, signer, device_id, payment_id, amount_fen=1250):
    announce = signed_announce(signer, device_id, payment_id, amount_fen=amount_fen)
    await client.publish(topics.down(device_id, topics.Down.ANNOUNCE), announce.to_json(), qos=1)


class Uplinks:
    """Every uplink of the device, kept, so a test can look for one that came before it asked."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    async def collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.seen.append((str(message.topic).rsplit("/", 1)[1], json.loads(message.payload)))

    async def wait(self, kind, match=lambda _body: True, *, after: int = 0, timeout_s: float = 15.0) -> dict:
        async with asyncio.timeout(timeout_s):
            while True:
                for seen_kind, body in self.seen[after:]:
                    if seen_kind == kind and match(body):
                        return body
                await asyncio.sleep(0.02)


async def test_agent_announces_through_the_tts_chip_and_prints_the_receipt(broker_agent):
    agent, signer, client, uplinks, (chip, _modem, printer) = broker_agent
    await publish_announce(client, signer, agent.device_id, "P-1")
    ack = await uplinks.wait("ack", lambda b: b["payment_id"] == "P-1")
    assert ack["status"] == "played"
    assert [u.text for u in chip.spoken] == ["微信收款十二点五元"]
    await eventually(_async(lambda: bool(printer.receipts)), timeout_s=5, what="the receipt")
    assert printer.receipts[0][0] == "好店 收款凭证"
    assert "金额: 12.50 元" in printer.receipts[0]
    health = await uplinks.wait("health")
    assert (health["modem"], health["registration"], health["tts"], health["printer"]) == (
        "ok",
        "home",
        "idle",
        "ok",
    )
    assert health["iccid"] == "89860025128306012474"
    assert health["cell"]["cell_id"] == "80D413D"


def tts_change(body):
    return body["kind"] in {"fault", "recovered"} and body["detail"]["part"] == "tts"


async def test_agent_survives_a_chip_that_vanishes_returns_and_sends_garbage(broker_agent):
    agent, signer, client, uplinks, (chip, _modem, _printer) = broker_agent
    chip.vanish()
    with capture_logs() as logs:
        await publish_announce(client, signer, agent.device_id, "P-gone")
        ack = await uplinks.wait("ack", lambda b: b["payment_id"] == "P-gone")
    assert ack["status"] == "failed"
    assert any(entry["event"] == "announcement could not be played" for entry in logs)
    event = await uplinks.wait("event", tts_change)
    assert (event["kind"], event["detail"]["state"]) == ("fault", "unreachable")

    mark = len(uplinks.seen)
    chip.appear()
    back = await uplinks.wait("event", tts_change, after=mark)
    assert (back["kind"], back["detail"]["state"]) == ("recovered", "ok")
    chip.send_garbage(32)
    await publish_announce(client, signer, agent.device_id, "P-back", amount_fen=500)
    ack = await uplinks.wait("ack", lambda b: b["payment_id"] == "P-back")
    assert ack["status"] == "played"
    assert chip.spoken[-1].text == "微信收款五元"
    assert agent.stats.played == 1
    assert agent.stats.play_failures == 1


async def test_agent_reports_a_modem_that_lost_its_network_and_a_printer_out_of_paper(broker_agent):
    agent, _signer, _client, uplinks, (_chip, modem, printer) = broker_agent
    await uplinks.wait("health")
    modem.set_registered(False)
    printer.faults.paper_out()

    def change(part):
        return lambda b: b["kind"] == "fault" and b["detail"]["part"] == part

    assert (await uplinks.wait("event", change("registration")))["detail"]["state"] == "searching"
    assert (await uplinks.wait("event", change("printer")))["detail"]["state"] == "paper_out"
    assert agent.connected
