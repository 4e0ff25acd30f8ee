"""Ed25519 signing of the messages that act on a device: announces, commands and settings.

A device must never play an announcement the server did not sign (nor reboot, nor change its
volume, for anyone else), so every `Signed` message carries `key_id` and `sig`. The signature
covers the canonical form of the message as sent, except `sig`: JSON with keys sorted, no
spaces, UTF-8 (not ASCII-escaped). Unknown fields are included, so a forward-compatible
addition cannot be slipped past a verifier. Fields that are null are left out, so a newer
model's optional field (absent, so null) does not change what an older server signed. Any language
reproduces it with its standard JSON encoder, and test vectors pin it down.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from firmware_protocols.errors import SignatureError

if TYPE_CHECKING:  # messages carry release manifests, which use the canonical form below
    from firmware_protocols.messages import S, Signed


def signed_fields(message: Signed) -> dict[str, Any]:
    """The fields a signature covers: every one that is not null."""
    return message.model_dump(mode="json", exclude_none=True)


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed: every field but `sig`, keys sorted, compact, UTF-8."""
    unsigned = {k: v for k, v in fields.items() if k != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 8 bytes of its SHA-256, in hex."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]


def encode_public_key(key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key_bytes(key)).decode()


def decode_public_key(text: str) -> Ed25519PublicKey:
    """Read a raw 32-byte Ed25519 public key written as base64."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"not a base64 raw Ed25519 public key: {exc}") from exc


class Signer:
    """Signs messages with the server's private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id_of(private_key.public_key())

    def signature_of(self, data: bytes) -> str:
        """A base64 Ed25519 signature of raw bytes (webhooks to the backend, not device messages)."""
        return base64.b64encode(self._key.sign(data)).decode()

    def sign(self, message: S) -> S:
        """Return `message` with this signer's `key_id` and a fresh `sig`."""
        fields = signed_fields(message)
        fields["key_id"] = self.key_id
        signature = self._key.sign(canonical_bytes(fields))
        fields["sig"] = base64.b64encode(signature).decode()
        return type(message).model_validate(fields)


class Verifier:
    """Verifies messages against the server keys a device was provisioned with."""

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey] | list[Ed25519PublicKey]) -> None:
        if isinstance(trusted, list):
            trusted = {key_id_of(k): k for k in trusted}
        if not trusted:
            raise SignatureError("a verifier needs at least one trusted server key")
        self._trusted = dict(trusted)

    def verify(self, message: Signed) -> None:
        """Return if `message` was signed by a trusted key, else raise `SignatureError`."""
        context = message.describe()
        key = self._trusted.get(message.key_id)
        if key is None:
            raise SignatureError(f"{context}: unknown signing key {message.key_id!r}")
        if not message.sig:
            raise SignatureError(f"{context}: unsigned")
        try:
            signature = base64.b64decode(message.sig, validate=True)
        except binascii.Error as exc:
            raise SignatureError(f"{context}: signature is not base64") from exc
        try:
            key.verify(signature, canonical_bytes(signed_fields(message)))
        except InvalidSignature:
            raise SignatureError(f"{context}: signature does not verify") from None
