"""The device's time (issue 24): the keeper's choice of source, the signed bounds, what it keeps
over a restart or a power cut, how it explains a refusal; each source against what a real one
sends (an SNTP server on a real UDP socket, a signed answer with the wrong nonce, a modem that
was never set); the password's order of checks; diagnose naming the clock."""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.clock import FakeClock
from edge_agent.clock_check import clock_check
from edge_agent.hardware.audio import MemorySink
from edge_agent.time_sources import (
    NTP_EPOCH_OFFSET_S,
    ModemTime,
    ServerTime,
    Sntp,
    TimeSample,
    TimeSourceError,
)
from edge_agent.timekeeper import TimeKeeper, TrustedClock
from firmware_protocols.credentials import ClockSkewError, CredentialError, check_mqtt_password, mqtt_password
from firmware_protocols.messages import TimeReference
from firmware_protocols.serial.at import NetworkTime
from firmware_protocols.signing import Signer, Verifier
from fleet_server.devices.states import DeviceState
from fleet_server.inspection.detectors import ClockFacts, DeviceFacts, FindingKind, InspectionThresholds, inspect
from fleet_server.inspection.rules import SIGNAL_OF
from tests.unit.agent_kit import SERVER_KEY, SIGNER, announce, deliver, make_agent, play_all, uplinks

pytestmark = pytest.mark.anyio

NOW = 1_796_120_430_000  # 2026-12-01 10:20:30 UTC


class Fixed:
    """A source that answers with a set offset, or fails."""

    def __init__(self, name: str, offset_ms: int | None, *, signed: bool = False) -> None:
        self.name, self.offset_ms, self.signed = name, offset_ms, signed
        self.asked = 0

    async def sample(self, _board: Any) -> TimeSample:
        self.asked += 1
        if self.offset_ms is None:
            raise TimeSourceError(f"{self.name}: down")
        return TimeSample(self.name, self.offset_ms, 50, signed=self.signed, max_skew_s=600 if self.signed else None)


def keeper(tmp_path, board, *sources) -> TimeKeeper:
    return TimeKeeper("SPK1", TrustedClock(board), list(sources), tmp_path)


async def test_the_best_source_that_answers_sets_the_clock(tmp_path):
    board = FakeClock(NOW - 300_000)  # five minutes slow
    k = keeper(tmp_path, board, Fixed("ntp", None), Fixed("modem", 300_400), Fixed("server", 300_000, signed=True))
    sample = await k.sync()
    assert sample is not None
    assert (sample.source, k.clock.now_ms()) == ("modem", NOW + 400)
    assert k.samples["ntp"]["error"] == "ntp: down"
    assert k.max_skew_s == 600


async def test_an_unsigned_time_far_from_the_servers_signed_time_is_overruled(tmp_path):
    """Someone on the radio or the LAN cannot move the clock away from what the server signed."""
    board = FakeClock(NOW)
    k = keeper(tmp_path, board, Fixed("modem", 3_600_000), Fixed("server", 0, signed=True))
    sample = await k.sync()
    assert sample is not None
    assert (sample.source, k.clock.offset_ms) == ("server", 0)


async def test_a_signed_message_moves_a_slow_clock_forward_and_never_back(tmp_path):
    board = FakeClock(NOW - 900_000)
    k = keeper(tmp_path, board)
    k.observe_signed(NOW, "announce P1 for SPK1")
    assert k.clock.now_ms() == NOW
    assert k.clock.source == "signed message"
    k.observe_signed(NOW - 3_600_000, "an old retained settings")  # an old message proves nothing
    assert k.clock.now_ms() == NOW
    k.observe_signed(NOW + 1_000, "within the servers' own disagreement")
    assert k.clock.now_ms() == NOW


async def test_a_restart_keeps_the_offset_and_a_power_cut_starts_from_the_last_trusted_time(tmp_path):
    board = FakeClock(NOW - 900_000)
    first = keeper(tmp_path, board, Fixed("server", 900_000, signed=True))
    await first.sync()
    first.save()
    restarted = keeper(tmp_path, board)
    assert restarted.clock.now_ms() == NOW
    assert restarted.clock.source == "saved (server)"
    # No clock battery: the board is back at 1970 after the power cut.
    reset = keeper(tmp_path, FakeClock(5_000))
    assert reset.clock.now_ms() == NOW
    assert reset.clock.source == "last saved time"


async def test_a_refusal_is_explained_by_the_clock_or_not(tmp_path):
    board = FakeClock(NOW + 900_000)
    server = Fixed("server", -900_000, signed=True)
    k = keeper(tmp_path, board, server)
    detail, retry = await k.explain_refusal("[code:135] Not authorized")
    assert retry
    assert detail == "clock off by +900 s (the broker allows ±600 s); corrected from server"
    detail, retry = await k.explain_refusal("[code:135] Not authorized")
    assert not retry
    assert detail.startswith("not the clock")
    assert "revoked" in detail
    server.offset_ms = None
    detail, retry = await k.explain_refusal("[code:135] Not authorized")
    assert not retry
    assert detail == "no time source answered: the clock may be off (server: down)"
    assert k.last_refusal is not None
    assert k.last_refusal["detail"] == detail


# -- the sources, against what real senders send ---------------------------------------------


class _NtpServer(asyncio.DatagramProtocol):
    def __init__(self, offset_ms: int, *, leap: int = 0, echo: bool = True) -> None:
        self.offset_ms, self.leap, self.echo = offset_ms, leap, echo

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = NOW + self.offset_ms

        def stamp(ms: int) -> bytes:
            return struct.pack("!II", ms // 1000 + NTP_EPOCH_OFFSET_S, ((ms % 1000) << 32) // 1000)

        origin = data[40:48] if self.echo else bytes(8)
        reply = bytes([(self.leap << 6) | (4 << 3) | 4, 2]) + bytes(22) + origin + stamp(now) + stamp(now)
        self.transport.sendto(reply, addr)


async def _ntp(server: _NtpServer) -> tuple[Any, int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    return transport, transport.get_extra_info("sockname")[1]


async def test_sntp_reads_the_offset_from_a_real_udp_answer():
    transport, port = await _ntp(_NtpServer(300_000))
    try:
        sample = await Sntp([f"127.0.0.1:{port}"]).sample(FakeClock(NOW))
    finally:
        transport.close()
    assert sample.source == "ntp"
    assert abs(sample.offset_ms - 300_000) <= 2


@pytest.mark.parametrize(
    ("server", "words"), [(_NtpServer(0, echo=False), "not to our query"), (_NtpServer(0, leap=3), "not synchronised")]
)
async def test_sntp_refuses_answers_not_to_us_or_from_an_unsynchronised_server(server, words):
    transport, port = await _ntp(server)
    try:
        with pytest.raises(TimeSourceError, match=words):
            await Sntp([f"127.0.0.1:{port}"], timeout_s=1).sample(FakeClock(NOW))
    finally:
        transport.close()


class _Modem:
    def __init__(self, answer: NetworkTime | None) -> None:
        self.answer = answer

    async def network_time(self) -> NetworkTime | None:
        return self.answer


async def test_the_modems_time_counts_unless_it_was_never_set():
    sample = await ModemTime(_Modem(NetworkTime(NOW - 900_000, 480))).sample(FakeClock(NOW))
    assert sample.offset_ms == -900_000 + 500
    with pytest.raises(TimeSourceError, match="never set"):
        await ModemTime(_Modem(NetworkTime(315_964_862_000, 0))).sample(FakeClock(NOW))
    with pytest.raises(TimeSourceError, match="no network time"):
        await ModemTime(_Modem(None)).sample(FakeClock(NOW))


def _time_server(signer: Signer, *, nonce: str | None = None, device: str = "SPK1", at_ms: int = NOW) -> Any:
    def answer(request: httpx.Request) -> httpx.Response:
        reference = signer.sign(
            TimeReference(
                device_id=device, ts=at_ms, nonce=nonce or request.url.params["nonce"], max_skew_s=600, key_id="x"
            )
        )
        return httpx.Response(200, content=reference.to_json())

    return httpx.MockTransport(answer)


async def test_the_servers_signed_time_counts_only_for_our_nonce_device_and_key():
    verifier = Verifier([SERVER_KEY.public_key()])

    def source(transport: Any) -> ServerTime:
        return ServerTime("https://fleet.test/api/v1/time", "SPK1", verifier, transport=transport)

    sample = await source(_time_server(SIGNER)).sample(FakeClock(NOW - 60_000))
    assert (sample.offset_ms, sample.signed, sample.max_skew_s) == (60_000, True, 600)
    with pytest.raises(TimeSourceError, match="not to our request"):
        await source(_time_server(SIGNER, nonce="replayed-nonce-0123456")).sample(FakeClock(NOW))
    with pytest.raises(TimeSourceError, match="not to our request"):
        await source(_time_server(SIGNER, device="SPK2")).sample(FakeClock(NOW))
    with pytest.raises(TimeSourceError, match="unknown signing key"):
        await source(_time_server(Signer(Ed25519PrivateKey.generate()))).sample(FakeClock(NOW))


# -- the password, and the announce path on corrected time --------------------------------------


def test_only_a_genuine_password_learns_that_its_clock_is_off():
    secret, other = b"s" * 32, b"o" * 32
    with pytest.raises(ClockSkewError) as skewed:
        check_mqtt_password(secret, "SPK1", mqtt_password(secret, "SPK1", NOW / 1000 + 900), NOW / 1000)
    assert skewed.value.skew_s == 900
    with pytest.raises(CredentialError, match="HMAC") as forged:
        check_mqtt_password(secret, "SPK1", mqtt_password(other, "SPK1", NOW / 1000 + 900), NOW / 1000)
    assert not isinstance(forged.value, ClockSkewError)


async def test_a_board_five_minutes_fast_plays_a_fresh_announce_once_corrected(tmp_path):
    board = FakeClock(NOW + 300_000)
    sink = MemorySink()
    agent = make_agent(tmp_path, board, sink)
    agent.timekeeper.sources = [Fixed("server", -300_000, signed=True)]
    await agent.timekeeper.sync()
    await deliver(agent, announce(FakeClock(NOW), "P5"))
    await play_all(agent)
    assert [r.text for r in sink.played] == ["微信收款十二点五元"]
    [(_, ack)] = uplinks(agent)
    assert ack["status"] == "played"
    assert abs(ack["play_started_at"] - NOW) < 1_000  # on the server's clock, not the board's


# -- diagnose ------------------------------------------------------------------------------------


def test_diagnose_fails_the_clock_of_a_board_15_minutes_off_and_says_what_to_do():
    state = {"source": "server", "offset_ms": 900_000, "samples": {"server": {"offset_ms": 900_000}}}
    check = clock_check(NOW - 900_000, state)
    assert check.status == "fail"
    assert "慢了 900 秒" in check.detail_zh
    assert "900 s slow" in check.detail_en
    assert "时钟电池" in check.hint_zh
    ok = clock_check(NOW, {"source": "modem", "offset_ms": 1_200, "samples": {}})
    assert ok.status == "pass"
    # Corrected, and within what the broker allows: the speaker works and would reconnect.
    assert clock_check(NOW, {"source": "modem", "offset_ms": -300_000, "samples": {}}).status == "warn"
    refused = {"source": "board", "offset_ms": 0, "samples": {}, "last_refusal": {"detail": "clock off by +900 s"}}
    assert clock_check(NOW, refused).status == "fail"


# -- the fleet's findings --------------------------------------------------------------------------


def _facts(clock: ClockFacts) -> DeviceFacts:
    return DeviceFacts("SPK1", DeviceState.IN_SERVICE, datetime(2026, 12, 1, tzinfo=UTC), clock=clock)


def test_a_board_clock_the_agent_corrects_is_a_maintenance_task_not_a_failure():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    t = InspectionThresholds()
    corrected = _facts(ClockFacts(board_offset_ms=86_400_000, skew_ms=40, reported_at=now))
    kinds = [f.kind for f in inspect(corrected, t, now)]
    assert kinds == [FindingKind.CLOCK]
    assert SIGNAL_OF.get(FindingKind.CLOCK) is None  # the device stays in service
    assert inspect(_facts(ClockFacts(board_offset_ms=-30_000, skew_ms=10, reported_at=now)), t, now) == []


def test_a_clock_the_device_cannot_correct_is_a_fault_with_the_clock_named():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    t = InspectionThresholds()
    fast = _facts(ClockFacts(board_offset_ms=0, skew_ms=300_000, reported_at=now))
    [finding] = inspect(fast, t, now)
    assert finding.kind is FindingKind.FAULTY
    assert finding.evidence["clock_off_s"] == 300
    assert "时钟" in finding.action_zh
    refused = _facts(ClockFacts(refused_skew_s=-900, refused_at=now, reported_at=now - timedelta(hours=1)))
    [finding] = inspect(refused, t, now)
    assert finding.evidence["reasons"] == ["clock off by -900 s, not corrected"]
    # A report kept in the outbox arrives late and looks slow: that is no clock fault.
    assert inspect(_facts(ClockFacts(skew_ms=-3_600_000, reported_at=now)), t, now) == []
