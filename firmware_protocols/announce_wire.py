"""A signed announce's bytes, built directly: the bridge's path, one per announced device.

    data = signed_announce(signer, device_id="SPK0001", ts=now, payment_id="P1", amount_fen=1250,
                           channel="wechat", kind="payment", paid_at=paid, issued_at=now, ttl_s=120)

The bytes are exactly `signer.sign(Announce(...)).to_json()` (the same fields in the same order,
the same signature over the same canonical form: `signing`), which the tests pin on generated
inputs; what it saves is the model's three passes (build, dump for signing, build again) on the
hot path. It checks what the model would refuse and raises `ValueError`: nothing it builds is an
announce a device would reject as malformed.
"""

from __future__ import annotations

import json
from typing import Any

from firmware_protocols.fields import EPOCH_MS_END, ID_MAX, PRINTABLE
from firmware_protocols.messages import MAX_AMOUNT_FEN, SCHEMA_VERSION, TTL_MAX_S, AlertCode, AnnounceKind, Channel
from firmware_protocols.signing import Signer, canonical_bytes
from firmware_protocols.topics import DEVICE_ID_PATTERN

_CHANNELS = frozenset(c.value for c in Channel)
_KINDS = frozenset(k.value for k in AnnounceKind)
_ALERTS = frozenset(a.value for a in AlertCode)
_WIRE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _problem(fields: dict[str, Any]) -> str | None:  # noqa: PLR0911 - one check per field, in the model's order
    """What the model would refuse in `fields`, or None: the same bounds (`fields`, `messages`)."""
    device_id, payment_id, alert, kind = fields["device_id"], fields["payment_id"], fields["alert"], fields["kind"]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        return f"device_id {device_id!r} is not a device id"
    for name in ("ts", "issued_at", "paid_at"):
        if not 0 <= fields[name] < EPOCH_MS_END:
            return f"{name} {fields[name]} is out of range"
    if not (len(payment_id) <= ID_MAX and PRINTABLE.fullmatch(payment_id)):
        return f"payment_id {payment_id!r} is not a payment id"
    if not 0 <= fields["amount_fen"] <= MAX_AMOUNT_FEN:
        return f"amount_fen {fields['amount_fen']} is out of range"
    if fields["channel"] not in _CHANNELS or kind not in _KINDS:
        return f"channel {fields['channel']!r} or kind {kind!r} is unknown"
    if (kind == AnnounceKind.ALERT) != (alert is not None) or (alert is not None and alert not in _ALERTS):
        return f"alert {alert!r} does not fit kind {kind!r}"
    if not 1 <= fields["ttl_s"] <= TTL_MAX_S:
        return f"ttl_s {fields['ttl_s']} is out of range"
    return None


def signed_announce(
    signer: Signer,
    *,
    device_id: str,
    ts: int,
    payment_id: str,
    amount_fen: int,
    channel: str,
    kind: str,
    paid_at: int,
    issued_at: int,
    ttl_s: int,
    alert: str | None = None,
) -> bytes:
    """The wire bytes of the announce these fields make, signed by `signer`."""
    # The model's field order (Message, Signed, Expiring, Announce), as its JSON has them.
    fields: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "device_id": device_id,
        "ts": ts,
        "key_id": signer.key_id,
        "sig": "",
        "issued_at": issued_at,
        "ttl_s": ttl_s,
        "type": "announce",
        "payment_id": payment_id,
        "amount_fen": amount_fen,
        "channel": channel,
        "kind": kind,
        "paid_at": paid_at,
        "alert": alert,
    }
    if (problem := _problem(fields)) is not None:
        raise ValueError(f"announce {payment_id!r} for {device_id!r}: {problem}")
    covered = canonical_bytes({k: v for k, v in fields.items() if v is not None})
    fields["sig"] = signer.signature_of(covered)
    return _WIRE.encode(fields).encode()
