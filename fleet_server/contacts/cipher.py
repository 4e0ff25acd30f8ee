"""Sensitive fields encrypted at rest: AES-256-GCM envelopes with a key id, and keyed hashes.

    keys = FieldKeys.load(path)          # {"active": "k2", "keys": {"k1": ..., "k2": ...}, "hash_key": ...}
    cipher = FieldCipher(keys)
    stored = cipher.encrypt("13800138000", context="merchants.phone:M001")   # "k2:<base64>"
    cipher.decrypt(stored, context="merchants.phone:M001")
    cipher.lookup_hash("138 0013 8000", kind="phone")                        # for WHERE phone_hash = ...

What is encrypted: a merchant's contact name, phone and settlement account reference, and a
field agent's phone. A copy of the database (a backup, a replica, a leaked dump) shows none of
them. The shop name stays in clear: it is on the shop's sign and on every payment receipt.

- Each envelope names the key that sealed it, so keys rotate without downtime: add a key, make
  it active, and `haodian keys rewrap` re-seals the old envelopes; the old key can go after.
- The `context` (table, column and row key) is bound in as associated data: an envelope copied
  onto another row or column does not decrypt.
- The lookup hash is HMAC-SHA256 under a key of its own, over a normalised value: equal phones
  find each other, and the hash is useless without the key. It cannot rotate without re-reading
  every row, which is what `rewrap` does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fleet_server.errors import FieldCryptError

KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _b64key(text: object, what: str) -> bytes:
    try:
        key = base64.b64decode(str(text), validate=True)
    except ValueError as exc:
        raise FieldCryptError(f"{what} is not base64: {exc}") from exc
    if len(key) != KEY_BYTES:
        raise FieldCryptError(f"{what} must be {KEY_BYTES} bytes, not {len(key)}")
    return key


@dataclass(frozen=True, slots=True)
class FieldKeys:
    active: str
    keys: dict[str, bytes]
    hash_key: bytes

    @classmethod
    def generate(cls, key_id: str = "k1") -> Self:
        return cls(key_id, {key_id: os.urandom(KEY_BYTES)}, os.urandom(KEY_BYTES))

    @classmethod
    def load(cls, path: Path) -> Self:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FieldCryptError(f"cannot read field keys {path}: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
            raise FieldCryptError(f"{path}: expected {{'active', 'keys': {{id: base64}}, 'hash_key'}}")
        keys = {}
        for key_id, text in data["keys"].items():
            if not _KEY_ID.fullmatch(key_id):
                raise FieldCryptError(f"{path}: key id {key_id!r} must be 1-32 of A-Z a-z 0-9 _ -")
            keys[key_id] = _b64key(text, f"{path}: key {key_id}")
        active = str(data.get("active"))
        if active not in keys:
            raise FieldCryptError(f"{path}: active key {active!r} is not among the keys {sorted(keys)}")
        return cls(active, keys, _b64key(data.get("hash_key"), f"{path}: hash_key"))

    def dumps(self) -> str:
        return json.dumps(
            {
                "active": self.active,
                "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
                "hash_key": base64.b64encode(self.hash_key).decode(),
            },
            indent=2,
        )


def normalise(value: str, kind: str) -> str:
    """The form that is hashed: phones keep their digits (and drop a +86), others fold case."""
    if kind == "phone":
        digits = re.sub(r"\D", "", value)
        return digits[2:] if digits.startswith("86") and len(digits) == 13 else digits
    return value.strip().casefold()


def mask(value: str, kind: str) -> str:
    """What a page shows: 138****8000 for a phone, 王** for a name, ****1234 for an account."""
    if kind == "name":
        return value[:1] + "*" * (len(value) - 1)
    if kind == "phone" and len(value) >= 7:
        return f"{value[:3]}****{value[-4:]}"
    return "****" + value[-4:] if len(value) > 4 else "****"


class FieldCipher:
    def __init__(self, keys: FieldKeys) -> None:
        self._keys = keys
        self._aead = {key_id: AESGCM(key) for key_id, key in keys.keys.items()}

    @property
    def active_key_id(self) -> str:
        return self._keys.active

    def encrypt(self, value: str, *, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self._keys.active].encrypt(nonce, value.encode(), context.encode())
        return f"{self._keys.active}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, envelope: str, *, context: str) -> str:
        key_id, sep, body = envelope.partition(":")
        if not sep:
            raise FieldCryptError(f"{context}: not an envelope (no key id)")
        aead = self._aead.get(key_id)
        if aead is None:
            raise FieldCryptError(f"{context}: sealed with key {key_id!r}, which is not configured")
        try:
            raw = base64.b64decode(body, validate=True)
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except (ValueError, InvalidTag) as exc:
            raise FieldCryptError(
                f"{context}: envelope does not decrypt (tampered, or moved from another row)"
            ) from exc

    def needs_rewrap(self, envelope: str) -> bool:
        return not envelope.startswith(f"{self._keys.active}:")

    def lookup_hash(self, value: str, *, kind: str) -> bytes:
        return hmac.new(self._keys.hash_key, f"{kind}|{normalise(value, kind)}".encode(), hashlib.sha256).digest()
