"""What a device reports is signed with its own secret, so that no one on the broker can forge it.

Announces go down signed by the server (Ed25519, `signing`); what comes back up says what the
merchant heard (acks), what a command did (results), whether the device is there (presence),
and how an update went (OTA status): the delivery rate and the fleet's figures are counted
from it. A device that holds a secret (`credentials`) signs every message it sends up with

    sig = base64url(HMAC-SHA256(report_key, canonical bytes))       43 characters, no padding
    report_key = HMAC-SHA256(device secret, "hd-report-key|v1")

where the canonical bytes are those announces are signed over (`signing.canonical_bytes`):
every field that is not null but `sig`, keys sorted, compact, UTF-8. The report key is kept
apart from the secret so a signature can never be replayed as an MQTT password or the reverse.
The servers derive the same key from the secret they know; a device maker checks their signer
against `vectors/device_protocol_v1.json` (`signed_reports`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import TYPE_CHECKING

from firmware_protocols.errors import SignatureError
from firmware_protocols.signing import canonical_bytes

if TYPE_CHECKING:  # the models import nothing from here; only the type is named
    from firmware_protocols.messages import R

SIG_CHARS = 43  # base64url of 32 bytes, unpadded
_KEY_LABEL = b"hd-report-key|v1"


def report_key(secret: bytes) -> bytes:
    """The key a device signs its reports with, from its secret."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def report_mac(key: bytes, message: R) -> str:
    fields = message.model_dump(mode="json", exclude_none=True)
    digest = hmac.new(key, canonical_bytes(fields), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_report(key: bytes, message: R) -> R:
    """`message` with its `sig` over everything else it says."""
    return message.model_copy(update={"sig": report_mac(key, message)})


def verify_report(key: bytes, message: R) -> None:
    """Return if `message` carries a signature by `key` over what it says; else raise
    `SignatureError` saying what is wrong."""
    context = f"{type(message).__name__.lower()} from {message.device_id}"
    if not message.sig:
        raise SignatureError(f"{context}: unsigned")
    try:
        base64.urlsafe_b64decode(message.sig + "=")
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{context}: signature is not base64url") from exc
    if not hmac.compare_digest(message.sig.encode(), report_mac(key, message).encode()):
        raise SignatureError(f"{context}: signature does not verify")
