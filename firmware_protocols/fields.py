"""Field types shared by every message and manifest of the device protocol."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import Field, StringConstraints

from firmware_protocols.topics import DEVICE_ID_PATTERN

# Payment ids and server-chosen ids: printable ASCII, 1 to ID_MAX characters.
PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
ID_MAX = 64
EPOCH_MS_END = 10**14  # epoch milliseconds are below this (the year 5138)

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN.pattern)]
PaymentId = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX, pattern=PRINTABLE.pattern)]
EpochMs = Annotated[int, Field(ge=0, lt=EPOCH_MS_END)]
# A device time before this is a board or module that lost its time (2023-01-01, before any of
# our firmware was built; a modem's power-on default is 1980 or 2000): never a real time.
TIME_FLOOR_MS = 1_672_531_200_000
ShortText = Annotated[str, StringConstraints(max_length=128)]
# Printable ASCII ids chosen by a server (commands, campaigns): safe in topics, logs and URLs.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX, pattern=PRINTABLE.pattern)]
HHMM = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]

# PostgreSQL's bigint, the widest integer any store of ours holds.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def unstorable(value: object, path: str = "") -> str | None:
    """What in a decoded JSON value no store can hold, or None if all of it can be stored.

    JSON can carry what PostgreSQL text and jsonb, file systems and serial codecs refuse: the
    NUL character (`\\u0000`), unpaired surrogates (`\\ud800`), integers wider than 64 bits and
    Python's `NaN`/`Infinity` extensions. A message holding one is valid JSON and may even fit
    its model, and would still be refused far downstream, so the boundary refuses it first,
    in every value and every key, naming where it is."""
    where = path or "<root>"
    problem: str | None = None
    if isinstance(value, str):
        problem = _text_problem(value, where)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        problem = None if INT64_MIN <= value <= INT64_MAX else f"{where}: integer out of the 64-bit range"
    elif isinstance(value, float):
        problem = None if math.isfinite(value) else f"{where}: not a finite number"
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = (isinstance(key, str) and _text_problem(key, f"{where} key {key!r}")) or unstorable(
                item, f"{path}.{key}" if path else str(key)
            )
            if problem:
                break
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if problem := unstorable(item, f"{path}[{index}]"):
                break
    return problem or None


def _text_problem(text: str, path: str) -> str | None:
    if "\x00" in text:
        return f"{path or '<root>'}: text holds a NUL character (\\u0000)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path or '<root>'}: text holds an unpaired surrogate, which UTF-8 cannot encode"
    return None
