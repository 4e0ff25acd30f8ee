"""Field types shared by every message and manifest of the device protocol."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from firmware_protocols.topics import DEVICE_ID_PATTERN

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN.pattern)]
PaymentId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
EpochMs = Annotated[int, Field(ge=0, lt=10**14)]
ShortText = Annotated[str, StringConstraints(max_length=128)]
# Printable ASCII ids chosen by a server (commands, campaigns): safe in topics, logs and URLs.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
HHMM = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
