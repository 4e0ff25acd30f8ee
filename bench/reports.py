"""The per-message cost of signed reports (issue 22), on one core, in a tight loop.

For a device's ack (the report the delivery rate is counted from) it measures, best of
`repeats` runs of `messages` each:

- the ack made and serialised unsigned (what a device did before signing), and signed
  (HMAC-SHA256 over the canonical bytes, then serialised): the device's added cost is the
  difference;
- the ack parsed and validated (what every server consumer does anyway), and parsed and its
  signature verified: the server's added cost is the difference;
- the raw HMAC-SHA256 of the canonical bytes alone: the floor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware_protocols.messages import Ack, AckStatus, decode_payload, parse_payload, validate_fields
from firmware_protocols.reports import report_canonical, report_key, signed_payload, verify_report


@dataclass(frozen=True, slots=True)
class Cost:
    what: str
    best_us: float
    median_us: float

    def line(self) -> str:
        return f"{self.what:52} {self.best_us:8.2f} us/message (median {self.median_us:8.2f})"


@dataclass(frozen=True, slots=True)
class ReportFigures:
    costs: list[Cost]

    def lines(self) -> list[str]:
        by = {c.what: c for c in self.costs}
        sign = (
            by["device: ack made, signed, serialised"].best_us - by["device: ack made, serialised (unsigned)"].best_us
        )
        verify = by["server: ack parsed, signature verified"].best_us - by["server: ack parsed and validated"].best_us
        return [
            *(c.line() for c in self.costs),
            f"added by signing on the device: {sign:.2f} us/ack; by verifying on a server: {verify:.2f} us/ack",
        ]


def _time(what: str, step: Callable[[int], object], messages: int, repeats: int) -> Cost:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(messages):
            step(i)
        runs.append((time.perf_counter() - started) / messages * 1e6)
    return Cost(what, min(runs), statistics.median(runs))


def measure(*, messages: int, repeats: int) -> ReportFigures:
    key = report_key(os.urandom(32))

    def ack(i: int) -> Ack:
        return Ack(
            device_id="SPK0001",
            ts=1764558000250 + i,
            payment_id=f"P2025120100{i:07d}",
            status=AckStatus.PLAYED,
            received_at=1764558000120 + i,
            play_started_at=1764558000180 + i,
            text="微信收款 十二点五元",
        )

    signed = [signed_payload(key, ack(i)) for i in range(messages)]
    unsigned = [ack(i).to_json() for i in range(messages)]
    canonical = [report_canonical(json.loads(ack(i).to_json())) for i in range(messages)]

    def verified(i: int) -> None:
        # As a server's router does it: the payload decoded once, validated, and its fields checked.
        fields = decode_payload(Ack, signed[i])
        verify_report(key, validate_fields(Ack, fields), fields)

    costs = [
        _time("device: ack made, serialised (unsigned)", lambda i: ack(i).to_json(), messages, repeats),
        _time("device: ack made, signed, serialised", lambda i: signed_payload(key, ack(i)), messages, repeats),
        _time("server: ack parsed and validated", lambda i: parse_payload(Ack, unsigned[i]), messages, repeats),
        _time("server: ack parsed, signature verified", verified, messages, repeats),
        _time(
            "floor: HMAC-SHA256 of the canonical bytes",
            lambda i: hmac.new(key, canonical[i], hashlib.sha256).digest(),
            messages,
            repeats,
        ),
    ]
    return ReportFigures(costs)
