"""Our codecs against the language-neutral vector files in firmware_protocols/vectors/.

Where each vector comes from (chip data sheets, Epson's ESC/POS reference, Quectel's AT manual,
3GPP TS 27.007, RFC 8032) is written in the vector's "source" field; this file only reads them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.speech import announcement_text
from firmware_protocols import topics
from firmware_protocols.credentials import decode_secret
from firmware_protocols.errors import CodecError, MessageError, SignatureError
from firmware_protocols.messages import Ack, Announce, CommandResult, Health, Presence, parse_payload
from firmware_protocols.reports import report_canonical, report_key, sign_report, verify_report
from firmware_protocols.serial import at, escpos, tts
from firmware_protocols.signing import Signer, Verifier, canonical_bytes, decode_public_key, key_id_of
from firmware_protocols.vectors import load
from tests.unit.decoding import drain

TTS = load("tts")
AT = load("at")
ESCPOS = load("escpos")
V1 = load("device_protocol_v1")


def _name(vector: dict[str, Any]) -> str:
    return str(vector.get("name") or vector.get("why") or vector.get("topic"))


# -- TTS chip ------------------------------------------------------------------------------------


def tts_frame(spec: dict[str, Any]) -> tts.Frame:
    if spec["type"] == "speak":
        return tts.Speak(spec["text"], tts.TextEncoding[spec["encoding"]], spec["music"])
    return tts.Control(tts.Command[spec["command"]])


@pytest.mark.parametrize("vector", TTS["frames"], ids=lambda v: f"{v['dialect']}-{v['name']}")
def test_tts_frame_vectors(vector: dict[str, Any]) -> None:
    dialect = tts.Dialect(vector["dialect"])
    raw = bytes.fromhex(vector["hex"])
    frame = tts_frame(vector["frame"])
    assert tts.encode(frame, dialect) == raw
    decoder = tts.FrameDecoder(dialect)
    decoder.feed(raw)
    assert drain(decoder.next_frame) == [frame]


@pytest.mark.parametrize("vector", TTS["replies"], ids=lambda v: v["reply"])
def test_tts_reply_vectors(vector: dict[str, Any]) -> None:
    decoder = tts.ReplyDecoder()
    decoder.feed(bytes.fromhex(vector["hex"]))
    assert drain(decoder.next_reply) == [tts.Reply[vector["reply"]]]


@pytest.mark.parametrize("vector", TTS["invalid"], ids=_name)
def test_tts_invalid_streams(vector: dict[str, Any]) -> None:
    decoder = tts.FrameDecoder(tts.Dialect(vector["dialect"]))
    decoder.feed(bytes.fromhex(vector["hex"]))
    expected = [("error", r["error_at"]) if "error_at" in r else tts_frame(r["frame"]) for r in vector["results"]]
    assert drain(decoder.next_frame) == expected


def test_tts_unknown_reply_is_a_codec_error() -> None:
    decoder = tts.ReplyDecoder()
    decoder.feed(b"\x41\x00\x4f")
    assert drain(decoder.next_reply) == [tts.Reply.RECEIVED, ("error", 1), tts.Reply.IDLE]


# -- AT commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", AT["build"], ids=lambda v: v["text"].strip())
def test_at_build_vectors(vector: dict[str, Any]) -> None:
    built = at.build(vector["name"], *vector["args"], query=vector.get("query", False))
    assert built == vector["text"].encode("ascii")


def at_event(spec: dict[str, Any], command: str) -> Any:
    if "urc" in spec:
        return at.Urc(spec["urc"])
    if "error_at" in spec:
        return ("error", spec["error_at"])
    response = spec["response"]
    return at.AtResponse(command, tuple(response["lines"]), at.Final(response["final"]), response["error"])


def at_events(vector: dict[str, Any]) -> list[Any]:
    parser = at.AtParser()
    if vector["command"]:
        parser.expect(vector["command"].encode("ascii") + b"\r")
    parser.feed(bytes.fromhex(vector["rx_hex"]) if "rx_hex" in vector else vector["rx"].encode("ascii"))
    # Offsets are checked where the vector gives them (errors); compare events without them.
    return [
        dataclasses.replace(event, offset=0) if isinstance(event, at.AtResponse | at.Urc) else event
        for event in drain(parser.next_event)
    ]


@pytest.mark.parametrize("vector", AT["transcripts"] + AT["invalid"], ids=_name)
def test_at_transcript_events(vector: dict[str, Any]) -> None:
    assert at_events(vector) == [at_event(spec, vector["command"]) for spec in vector["events"]]


VALUE_PARSERS: dict[str, Callable[[at.AtResponse], Any]] = {
    "csq": at.parse_csq,
    "iccid": at.parse_iccid,
    "imei": at.parse_imei,
    "servingcell": at.parse_servingcell,
    "cclk": at.parse_cclk,
    "qlts": at.parse_qlts,
    "identity": at.parse_ati,
}


@pytest.mark.parametrize("vector", AT["transcripts"], ids=_name)
def test_at_transcript_values(vector: dict[str, Any]) -> None:
    events = at_events(vector)
    value = dict(vector["value"])
    kind = value.pop("kind")
    response = next((e for e in events if isinstance(e, at.AtResponse)), None)
    if kind == "error":
        assert response is not None
        assert not response.ok
        with pytest.raises(CodecError, match="failed"):
            at.parse_csq(response)
        return
    parsed: Any
    if kind == "creg_urc":
        urc = next(e for e in events if isinstance(e, at.Urc))
        parsed = at.parse_registration(urc, value.pop("prefix"))
    elif kind == "ctze":
        parsed = at.parse_ctze(next(e for e in events if isinstance(e, at.Urc)))
    elif kind == "qlts_none":
        assert response is not None
        with pytest.raises(CodecError, match=r"not a modem time|expected"):
            at.parse_qlts(response)
        return
    elif kind in ("iccid", "imei"):
        assert response is not None
        assert VALUE_PARSERS[kind](response) == value[kind]
        return
    else:
        assert response is not None
        parsed = (
            at.parse_registration(response, value.pop("prefix")) if kind == "creg" else VALUE_PARSERS[kind](response)
        )
    if "status" in value:
        value["status"] = at.RegStatus[value["status"]]
    assert dataclasses.asdict(parsed) == value


def test_at_value_errors_point_at_the_response() -> None:
    parser = at.AtParser()
    parser.feed(b"RDY\r\n")
    parser.expect(at.build("+CSQ"))
    parser.feed(b"\r\n+CSQ: 40,99\r\n\r\nOK\r\n")
    events = drain(parser.next_event)
    response = events[-1]
    with pytest.raises(CodecError, match="out of range") as caught:
        at.parse_csq(response)
    assert caught.value.offset == 7  # where "+CSQ: 40,99" starts in the stream


def test_at_one_command_at_a_time() -> None:
    parser = at.AtParser()
    parser.expect(at.build("+CSQ"))
    with pytest.raises(ValueError, match="one command at a time"):
        parser.expect(at.build("+CREG", query=True))
    assert parser.abandon() == "AT+CSQ"
    parser.expect(at.build("+CREG", query=True))


@pytest.mark.parametrize(("name", "args"), [("CSQ", ()), ("+QENG", ('a"b',)), ("+QENG", ("中",)), ("+C SQ", ())])
def test_at_build_refuses_what_a_modem_could_misread(name: str, args: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="AT"):
        at.build(name, *args)


# -- ESC/POS -------------------------------------------------------------------------------------


def escpos_command(spec: dict[str, Any]) -> escpos.Command:  # noqa: PLR0911 - one return per command
    kind = spec["type"]
    simple: dict[str, escpos.Command] = {"init": escpos.Init(), "lf": escpos.LineFeed()}
    if kind in simple:
        return simple[kind]
    if kind == "align":
        return escpos.SetAlign(escpos.Align[spec["align"]])
    if kind == "bold":
        return escpos.Bold(spec["on"])
    if kind == "size":
        return escpos.Size(spec["width"], spec["height"])
    if kind == "chinese":
        return escpos.ChineseMode(spec["on"])
    if kind == "text":
        return escpos.Text(spec["text"])
    if kind == "feed":
        return escpos.FeedLines(spec["lines"])
    if kind == "cut":
        return escpos.Cut(spec["partial"], spec["feed"])
    assert kind == "status_request"
    return escpos.StatusRequest(spec["kind"])


@pytest.mark.parametrize("vector", ESCPOS["commands"], ids=_name)
def test_escpos_command_vectors(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    commands = [escpos_command(spec) for spec in vector["commands"]]
    assert escpos.encode(commands) == raw
    decoder = escpos.CommandDecoder()
    decoder.feed(raw)
    assert drain(decoder.next_command) == commands


def test_escpos_receipt_builder_matches_the_receipt_vector() -> None:
    receipt = (
        escpos.Receipt()
        .init()
        .chinese()
        .align(escpos.Align.CENTER)
        .bold()
        .size(2, 2)
        .line("好店 收款凭证")
        .size(1, 1)
        .bold(on=False)
        .align(escpos.Align.LEFT)
        .line("微信收款 12.50元")
        .chinese(on=False)
        .line("PAY-1")
        .feed(3)
        .cut(partial=True)
    )
    vector = next(v for v in ESCPOS["commands"] if v["name"] == "a payment receipt")
    assert receipt.encode() == bytes.fromhex(vector["hex"])


@pytest.mark.parametrize("vector", ESCPOS["invalid"], ids=_name)
def test_escpos_invalid_streams(vector: dict[str, Any]) -> None:
    decoder = escpos.CommandDecoder()
    decoder.feed(bytes.fromhex(vector["hex"]))
    results = vector["results"]
    expected = [("error", r["error_at"]) if "error_at" in r else escpos_command(r["command"]) for r in results]
    assert drain(decoder.next_command) == expected


@pytest.mark.parametrize("vector", ESCPOS["status"], ids=_name)
def test_escpos_status_vectors(vector: dict[str, Any]) -> None:
    status = escpos.parse_status(vector["kind"], int(vector["byte"], 16))
    for flag, value in vector["flags"].items():
        assert getattr(status, flag) is value, flag
    assert status.answered == {vector["kind"]}
    assert escpos.status_byte(vector["kind"], status) == int(vector["byte"], 16)


@pytest.mark.parametrize("vector", ESCPOS["invalid_status"], ids=lambda v: v["why"])
def test_escpos_invalid_status_bytes(vector: dict[str, Any]) -> None:
    with pytest.raises(CodecError, match="fixed bits"):
        escpos.parse_status(vector["kind"], int(vector["byte"], 16), offset=3)


def test_escpos_status_merges_into_one_state() -> None:
    status = escpos.parse_status(1, 0x12)
    status = escpos.parse_status(2, 0x16, into=status)
    assert status.state == "cover_open"
    status = escpos.parse_status(4, 0x72, into=status)
    assert status.state == "paper_out"
    assert status.answered == {1, 2, 4}


@pytest.mark.parametrize(
    "commands",
    [[escpos.Text("微信")], [escpos.Size(9, 1)], [escpos.StatusRequest(5)], [escpos.Text("a\nb")]],
    ids=["chinese-off", "size", "status", "control-in-text"],
)
def test_escpos_encode_refuses_what_the_printer_cannot_take(commands: list[escpos.Command]) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        escpos.encode(commands)


# -- device protocol v1 --------------------------------------------------------------------------


def test_v1_signing_key_is_the_rfc8032_test_key() -> None:
    key = V1["signing_key"]
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["private_seed_hex"]))
    public = private.public_key()
    assert public.public_bytes_raw().hex() == key["public_key_hex"]
    assert decode_public_key(key["public_key_base64"]).public_bytes_raw() == public.public_bytes_raw()
    assert key_id_of(public) == key["key_id"]


@pytest.mark.parametrize("vector", V1["topics"], ids=lambda v: v["topic"])
def test_v1_topics(vector: dict[str, Any]) -> None:
    parsed = topics.parse(vector["topic"])
    assert (parsed.device_id, str(parsed.direction), str(parsed.kind)) == (
        vector["device_id"],
        vector["direction"],
        vector["kind"],
    )
    assert str(parsed) == vector["topic"]


@pytest.mark.parametrize("topic", V1["invalid_topics"])
def test_v1_invalid_topics(topic: str) -> None:
    with pytest.raises(MessageError):
        topics.parse(topic)


def _verifier() -> Verifier:
    return Verifier([decode_public_key(V1["signing_key"]["public_key_base64"])])


@pytest.mark.parametrize("vector", V1["announces"], ids=_name)
def test_v1_announce_canonical_form_and_signature(vector: dict[str, Any]) -> None:
    message = vector["message"]
    assert canonical_bytes(message).decode() == vector["canonical"]
    announce = parse_payload(Announce, _json(message), topic=vector["topic"])
    _verifier().verify(announce)
    # Ed25519 is deterministic: our signer reproduces the vector's signature exactly.
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(V1["signing_key"]["private_seed_hex"]))
    assert Signer(private).sign(announce.model_copy(update={"sig": ""})).sig == message["sig"]
    assert base64.b64decode(message["sig"]) == private.sign(vector["canonical"].encode())
    if "spoken" in vector:
        assert announcement_text(announce.channel, announce.kind, announce.amount_fen) == vector["spoken"]


def _json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode()


@pytest.mark.parametrize("vector", V1["forged"], ids=_name)
def test_v1_forged_announces_are_refused(vector: dict[str, Any]) -> None:
    announce = parse_payload(Announce, _json(vector["message"]), topic="hd/v1/SPK0001/down/announce")
    with pytest.raises(SignatureError):
        _verifier().verify(announce)


@pytest.mark.parametrize("vector", V1["messages"], ids=_name)
def test_v1_messages_parse_and_keep_their_fields(vector: dict[str, Any]) -> None:
    model = {"presence": Presence, "ack": Ack, "health": Health}[vector["message"]["type"]]
    parsed = parse_payload(model, _json(vector["message"]), topic=vector["topic"])
    assert parsed.model_dump(mode="json", exclude_none=True) == vector["message"]


@pytest.mark.parametrize("vector", V1["invalid_messages"], ids=_name)
def test_v1_invalid_messages(vector: dict[str, Any]) -> None:
    model = {"presence": Presence, "ack": Ack, "announce": Announce, "health": Health}[vector["message"]["type"]]
    with pytest.raises(MessageError):
        parse_payload(model, _json(vector["message"]), topic="hd/v1/SPK0001/up/x")


REPORTS = V1["signed_reports"]
REPORT_MODELS = {"presence": Presence, "ack": Ack, "result": CommandResult}


def _report_key() -> bytes:
    secret = bytes.fromhex(REPORTS["device_secret_hex"])
    assert decode_secret(REPORTS["device_secret_base64url"]) == secret
    key = report_key(secret)
    assert key.hex() == REPORTS["report_key_hex"]
    return key


@pytest.mark.parametrize("vector", REPORTS["reports"], ids=_name)
def test_v1_signed_report_canonical_form_and_mac(vector: dict[str, Any]) -> None:
    message = vector["message"]
    assert report_canonical(message).decode() == vector["canonical"]
    key = _report_key()
    mac = hmac.new(key, vector["canonical"].encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(mac).decode().rstrip("=") == message["sig"]
    report = parse_payload(REPORT_MODELS[message["type"]], _json(message), topic=vector["topic"])
    verify_report(key, report, message)
    assert sign_report(key, report.model_copy(update={"sig": None})).sig == message["sig"]


@pytest.mark.parametrize("vector", REPORTS["forged"], ids=_name)
def test_v1_forged_reports_are_refused(vector: dict[str, Any]) -> None:
    report = parse_payload(REPORT_MODELS[vector["message"]["type"]], _json(vector["message"]))
    with pytest.raises(SignatureError):
        verify_report(_report_key(), report)
