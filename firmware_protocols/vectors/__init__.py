"""Language-neutral test vectors: JSON files any implementation of our protocols checks itself against.

    tts.json                  SYN6288 / XFS5152 frames, chip replies, broken streams
    at.json                   AT command bytes, modem transcripts and the values they mean
    escpos.json               ESC/POS commands and real-time status bytes
    device_protocol_v1.json   MQTT topics, v1 messages, canonical form and Ed25519 signatures,
                              and the HMAC-signed reports devices send up

Each file says its own format in its "format" field, and each vector says where it comes from.
Our tests run from these same files.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

NAMES = ("tts", "at", "escpos", "device_protocol_v1")


def load(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise ValueError(f"no vector file {name!r}; there are {', '.join(NAMES)}")
    text = (resources.files(__package__) / f"{name}.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data
