"""The irreducible floor under one notification's bridge CPU, measured in the same run.

What a bridge cannot avoid for a notification, done back to back in one process with nothing
else in the way: the RSA2 verify of the body, one Ed25519 signature per announced device with
the announce's bytes built (`announce_wire`), and the notification's share of one batched
durable write (`batch` payments with a delivery each, sent as one statement and committed, the
client's CPU divided by `batch`). Measured as this process's CPU time, so the goal "within
2.5x of the floor" compares like with like: the bridge's CPU per notification against it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from firmware_protocols.announce_wire import signed_announce
from firmware_protocols.signing import Signer
from payment_bridge import rsa2
from payment_bridge.notifications import SIGNATURE_HEADER

# Notifications timed for the verify and sign parts, and batches for the write.
SAMPLES = 2000
BATCHES = 100

_TABLES = (
    "CREATE TEMPORARY TABLE floor_payments (payment_id text PRIMARY KEY, merchant_id text, amount_fen bigint,"
    " channel text, paid_at timestamptz, received_at timestamptz, raw jsonb)",
    "CREATE TEMPORARY TABLE floor_deliveries (payment_id text, device_id text, status text,"
    " expires_at timestamptz, PRIMARY KEY (payment_id, device_id))",
)
_WRITE = (
    "WITH given AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS x(payment_id text, merchant_id text,"
    " amount_fen bigint, channel text, device_id text, raw jsonb)),"
    " paid AS (INSERT INTO floor_payments SELECT payment_id, merchant_id, amount_fen, channel, now(), now(), raw"
    " FROM given ON CONFLICT DO NOTHING)"
    " INSERT INTO floor_deliveries SELECT payment_id, device_id, 'pending', now() + interval '2 minutes' FROM given"
)


@dataclass(frozen=True, slots=True)
class Floor:
    verify_us: float
    sign_us: float
    write_us: float
    batch: int

    @property
    def total_us(self) -> float:
        return self.verify_us + self.sign_us + self.write_us

    def line(self) -> str:
        return (
            f"floor, one process back to back: {self.total_us:,.0f} us of CPU per notification"
            f" (RSA2 verify {self.verify_us:,.0f}, Ed25519 sign and announce bytes {self.sign_us:,.0f},"
            f" share of a batched commit of {self.batch} {self.write_us:,.0f})"
        )


def _cpu_us_each(count: int, started: float) -> float:
    return (time.process_time() - started) / count * 1e6


def measure_floor(
    notes: Sequence[tuple[bytes, dict[str, str]]], backend_key: RSAPublicKey, database_url: str, batch: int
) -> Floor:
    """The floor over the first SAMPLES of `notes` (the run's own notifications)."""
    sample = list(notes[:SAMPLES])
    started = time.process_time()
    for body, headers in sample:
        if not rsa2.verify(backend_key, body, headers[SIGNATURE_HEADER]):
            raise ValueError("a bench notification does not verify")
    verify_us = _cpu_us_each(len(sample), started)
    parsed = [json.loads(body) for body, _ in sample]
    signer = Signer(Ed25519PrivateKey.generate())  # the floor's own, made for this run
    now = int(time.time() * 1000)
    started = time.process_time()
    for n, note in enumerate(parsed):
        signed_announce(
            signer,
            device_id=f"BD{n % 1000:05d}",
            ts=now,
            payment_id=note["payment_id"],
            amount_fen=1250,
            channel=note["channel"],
            kind="payment",
            paid_at=now,
            issued_at=now,
            ttl_s=120,
        )
    sign_us = _cpu_us_each(len(parsed), started)
    batch = max(1, batch)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in _TABLES:
            conn.execute(statement)
        started = time.process_time()
        for b in range(BATCHES):
            rows = [
                {
                    "payment_id": f"F{b}-{i}",
                    "merchant_id": note["merchant_id"],
                    "amount_fen": 1250,
                    "channel": note["channel"],
                    "device_id": f"BD{i:05d}",
                    "raw": note,
                }
                for i, note in enumerate(parsed[:batch])
            ]
            conn.execute(_WRITE, (json.dumps(rows),))
        write_us = _cpu_us_each(BATCHES * batch, started)
    return Floor(verify_us=verify_us, sign_us=sign_us, write_us=write_us, batch=batch)
