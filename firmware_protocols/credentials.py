"""Device credentials on the MQTT connection: a password signed with the device's own secret.

Each device holds a 32-byte secret issued once at provisioning. It never sends the secret: at
every connect it sends, as the MQTT password,

    hd1.<unix seconds>.<base64url HMAC-SHA256(secret, "hd1|<device_id>|<unix seconds>")>

with its device id as the username. The broker's authenticator recomputes the HMAC with the
secret it knows and accepts the password only within `max_skew_s` of its own clock, so a
password read off one connection is worthless minutes later (TLS keeps it from being read at
all). Revoking a device, or rotating its secret, takes effect at its next connect.

The secret is derived from the fleet's device master key, the device id and a generation
counter (`derive_device_secret`), so the server stores no per-device secret: only which
generation is current and whether it is revoked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from firmware_protocols.errors import ProtocolError
from firmware_protocols.topics import check_device_id

SCHEME = "hd1"
SECRET_BYTES = 32
# Devices correct their clock before connecting (NTP, the modem's network time, or the server's
# signed time: `edge_agent.timekeeper`); ten minutes covers a board between two corrections
# without making a captured password useful for long.
DEFAULT_MAX_SKEW_S = 600
_PASSWORD = re.compile(r"^hd1\.(\d{1,12})\.([A-Za-z0-9_-]{43})$")


class CredentialError(ProtocolError):
    """A device credential that is malformed or does not verify; says which and why."""


class ClockSkewError(CredentialError):
    """A password the device really signed, at a time too far from the server's clock: the
    device's clock is off by `skew_s` seconds (positive: fast)."""

    def __init__(self, skew_s: int, max_skew_s: int) -> None:
        super().__init__(f"device clock off by {skew_s:+d} s (the broker allows ±{max_skew_s} s)")
        self.skew_s = skew_s
        self.max_skew_s = max_skew_s


def derive_device_secret(master_key: bytes, device_id: str, generation: int) -> bytes:
    """The secret of `device_id` at `generation` (1 at first provisioning, +1 at each rotation)."""
    if len(master_key) < SECRET_BYTES:
        raise CredentialError(f"device master key must be at least {SECRET_BYTES} bytes")
    if generation < 1:
        raise CredentialError(f"generation must be 1 or more, not {generation}")
    message = f"hd-device-secret|{check_device_id(device_id)}|{generation}".encode()
    return hmac.new(master_key, message, hashlib.sha256).digest()


def encode_secret(secret: bytes) -> str:
    """How a secret is written into a device's configuration."""
    return base64.urlsafe_b64encode(secret).decode().rstrip("=")


def decode_secret(text: str) -> bytes:
    try:
        secret = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (ValueError, TypeError) as exc:
        raise CredentialError(f"device secret is not base64url: {exc}") from exc
    if len(secret) != SECRET_BYTES:
        raise CredentialError(f"device secret must be {SECRET_BYTES} bytes, not {len(secret)}")
    return secret


def _mac(secret: bytes, device_id: str, ts: int) -> str:
    digest = hmac.new(secret, f"{SCHEME}|{device_id}|{ts}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def mqtt_password(secret: bytes, device_id: str, now_s: float) -> str:
    """The password a device sends when it connects at `now_s` (unix seconds)."""
    ts = int(now_s)
    return f"{SCHEME}.{ts}.{_mac(secret, check_device_id(device_id), ts)}"


def password_time(password: str) -> int:
    """The time a password claims, or `CredentialError` if it is not of the `hd1` form."""
    match = _PASSWORD.fullmatch(password)
    if match is None:
        raise CredentialError("password is not of the form hd1.<seconds>.<hmac>")
    return int(match.group(1))


def check_mqtt_password(
    secret: bytes, device_id: str, password: str, now_s: float, *, max_skew_s: int = DEFAULT_MAX_SKEW_S
) -> None:
    """Return if `password` proves `device_id` holds `secret` at about `now_s`; else raise
    `CredentialError` saying why (malformed, wrong HMAC), or `ClockSkewError` for a genuine
    password too old or from the future.

    The HMAC is checked first: only a device that holds the secret learns (and has recorded)
    that its clock is off, so no one else can make a device look skewed."""
    ts = password_time(password)
    expected = f"{SCHEME}.{ts}.{_mac(secret, device_id, ts)}"
    if not hmac.compare_digest(expected.encode(), password.encode()):
        raise CredentialError("password HMAC does not verify")
    if abs(now_s - ts) > max_skew_s:
        raise ClockSkewError(round(ts - now_s), max_skew_s)
