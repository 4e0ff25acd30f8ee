"""Whether a device's report can be believed: the servers' side of `firmware_protocols.reports`.

    authority = ReportAuthority(pool, credentials)
    router = Router("bridge", Direction.UP, verify=authority.verify, on_reject=...)

For each report the device's current secret is derived (`DeviceCredentials.secret`), and:

- a report signed by it is believed (`True`); the first one at a generation marks the device
  as one that signs (`device_credentials.signs_reports_at`), for good;
- an unsigned report from a device that signs, or one whose signature does not verify, is a
  forgery: `SignatureError`, and the router quarantines it;
- an unsigned report from a device that has never signed (protocol v1 before signing, or a
  device without credentials) is believed as before (`False`), and counted: the figures say
  how many acks were unsigned.

So a device cannot be downgraded by a forged hello: once it has signed, only a rotation of its
secret (a new generation, unmarked) makes an unsigned report acceptable again. The trust of
each device is cached (`CACHE_S`; a signed report from a device read as having no credentials
reads it afresh at most once a second); an unsigned report reads it afresh at most every
`UNSIGNED_REFRESH_S` (a mark set by another server process: the bridge may take an unsigned
forgery for that long after the ingest saw a device's first signature, and not after the bridge
saw one itself), and a failed signature at most once a second (a rotation is seen at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from firmware_protocols.errors import SignatureError
from firmware_protocols.messages import Report
from firmware_protocols.reports import report_key, verify_report
from fleet_server.db.fetch import execute, fetch_row
from fleet_server.identity import queries
from fleet_server.identity.store import DeviceCredentials

CACHE_S = 300.0
# An unsigned report from a device with credentials reads afresh whether it signs, at most this
# often: another server process may have seen its first signature.
UNSIGNED_REFRESH_S = 10.0
REFRESH_S = 1.0


@dataclass(slots=True)
class _Trust:
    generation: int
    key: bytes
    signs: bool


@dataclass(slots=True)
class ReportStats:
    signed: int = 0
    unsigned: int = 0  # believed without a signature: devices that have never signed
    refused: int = 0


class ReportAuthority:
    def __init__(
        self, pool: AsyncConnectionPool, credentials: DeviceCredentials, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = pool
        self._credentials = credentials
        self._clock = clock
        self._trust: dict[str, tuple[float, _Trust | None]] = {}  # device -> (read at, trust)
        self.stats = ReportStats()

    async def verify(self, message: Report, sent: Mapping[str, Any] | None = None) -> bool:
        """True: signed by its device. False: unsigned, from a device that does not sign.
        `SignatureError`: not to be believed. `sent`: its JSON object as it came."""
        try:
            return await self._verify(message, sent)
        except SignatureError:
            self.stats.refused += 1
            raise

    async def _verify(self, message: Report, sent: Mapping[str, Any] | None) -> bool:
        device = message.device_id
        trust = await self._lookup(device, max_age_s=CACHE_S)
        if message.sig is None:
            if trust is not None and not trust.signs:
                trust = await self._lookup(device, max_age_s=UNSIGNED_REFRESH_S)
            if trust is not None and trust.signs:
                raise SignatureError(f"{type(message).__name__.lower()} from {device}: unsigned, and {device} signs")
            self.stats.unsigned += 1
            return False
        if trust is None:
            trust = await self._lookup(device, max_age_s=REFRESH_S)  # provisioned since it was read?
        if trust is None:
            # No credentials: nothing to check the signature with; as good as unsigned.
            self.stats.unsigned += 1
            return False
        try:
            verify_report(trust.key, message, sent)
        except SignatureError:
            fresh = await self._lookup(device, max_age_s=REFRESH_S)
            if fresh is None or fresh.generation == trust.generation:
                raise
            verify_report(fresh.key, message, sent)  # signed with the secret of a rotation since cached
            trust = fresh
        if not trust.signs:
            await execute(self._pool, queries.SIGNS_REPORTS, (device, trust.generation))
            trust.signs = True
        self.stats.signed += 1
        return True

    async def _lookup(self, device: str, *, max_age_s: float) -> _Trust | None:
        now = self._clock()
        cached = self._trust.get(device)
        if cached is not None and now - cached[0] < max_age_s:
            return cached[1]
        row = await fetch_row(self._pool, queries.REPORT_TRUST, (device,))
        trust = None
        if row is not None:
            generation, signs_at = row
            key = report_key(self._credentials.secret(device, generation))
            trust = _Trust(generation, key, signs=signs_at is not None)
        self._trust[device] = (now, trust)
        return trust
