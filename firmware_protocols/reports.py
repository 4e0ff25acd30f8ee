"""What a device reports is signed with its own secret, so that no one on the broker can forge it.

Announces go down signed by the server (Ed25519, `signing`); what comes back up says what the
merchant heard (acks), what a command did (results), whether the device is there (presence),
and how an update went (OTA status): the delivery rate and the fleet's figures are counted
from it. A device that holds a secret (`credentials`) signs every message it sends up with

    sig = base64url(HMAC-SHA256(report_key, canonical bytes))       43 characters, no padding
    report_key = HMAC-SHA256(device secret, "hd-report-key|v1")

where the canonical bytes are those of the JSON object as sent (`report_canonical`): every
member but `sig`, and no member that is null at any depth, keys sorted, compact, UTF-8 (the form
announces are signed in, `signing.canonical_bytes`, with nulls dropped inside objects too). The
servers check the signature over the fields as they arrived, so a device that leaves out a
field with a default signs only what it sends. The report key is kept
apart from the secret so a signature can never be replayed as an MQTT password or the reverse.
The servers derive the same key from the secret they know; a device maker checks their signer
against `vectors/device_protocol_v1.json` (`signed_reports`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from firmware_protocols.errors import SignatureError
from firmware_protocols.signing import canonical_bytes

if TYPE_CHECKING:  # the models import nothing from here; only the types are named
    from firmware_protocols.messages import R, Report

SIG_CHARS = 43  # base64url of 32 bytes, unpadded
_KEY_LABEL = b"hd-report-key|v1"


def report_key(secret: bytes) -> bytes:
    """The key a device signs its reports with, from its secret."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def report_canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes a report's MAC covers: the JSON object as sent, without `sig` and without any
    null member at any depth, keys sorted, compact, UTF-8."""
    return canonical_bytes(_without_nulls(dict(fields)))


def report_mac(key: bytes, fields: Mapping[str, Any]) -> str:
    digest = hmac.new(key, report_canonical(fields), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def signed_payload(key: bytes, message: Report) -> bytes:
    """`message` as a device sends it, signed: its JSON with `sig` added."""
    fields = message.model_dump(mode="json")
    fields.pop("sig", None)
    fields["sig"] = report_mac(key, fields)
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def sign_report(key: bytes, message: R) -> R:
    """`message` with its `sig` over everything else it says."""
    return message.model_copy(update={"sig": report_mac(key, message.model_dump(mode="json"))})


def verify_report(key: bytes, message: Report, sent: Mapping[str, Any] | None = None) -> None:
    """Return if the report carries a signature by `key` over what it says; else raise
    `SignatureError` saying what is wrong. `sent`: its JSON object as it came, which the
    signature covers (a device may leave out fields that have defaults); without it, the
    message's own fields."""
    context = f"{type(message).__name__.lower()} from {message.device_id}"
    if not message.sig:
        raise SignatureError(f"{context}: unsigned")
    fields = sent if sent is not None else message.model_dump(mode="json")
    if not hmac.compare_digest(message.sig.encode(), report_mac(key, fields).encode()):
        raise SignatureError(f"{context}: signature does not verify")
