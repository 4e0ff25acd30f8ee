"""Device credentials in PostgreSQL, and the broker's authenticator built on them.

Provisioning issues a device its secret once (generation 1); asking again is refused unless
the caller rotates, which moves to the next generation and so retires the old secret. Revoking
marks the row; the broker asks `BrokerAuthority.authenticate` at every connect, so a revoked or
rotated device is refused from its next connect on. Only generations and dates are stored: the
secret itself is derived from the device master key when it is needed.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols import topics
from firmware_protocols.credentials import (
    DEFAULT_MAX_SKEW_S,
    ClockSkewError,
    CredentialError,
    check_mqtt_password,
    derive_device_secret,
)
from firmware_protocols.errors import MessageError
from fleet_server.db.fetch import execute, fetch_model, fetch_row, fetch_rows
from fleet_server.errors import FleetError, IdentityError
from fleet_server.identity import queries
from fleet_server.identity.access import Account, AccountKind

log = structlog.get_logger(__name__)


class CredentialStatus(BaseModel):
    """A device's credentials as stored (never the secret), and as the API shows them."""

    device_id: str
    generation: int
    issued_at: datetime
    issued_by: str
    revoked_at: datetime | None
    revoked_by: str | None


@dataclass(frozen=True, slots=True)
class Issued:
    device_id: str
    generation: int
    secret: bytes


class DeviceCredentials:
    def __init__(self, pool: AsyncConnectionPool, master_key: bytes) -> None:
        self._pool = pool
        self._master_key = master_key

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    def secret(self, device_id: str, generation: int) -> bytes:
        return derive_device_secret(self._master_key, device_id, generation)

    async def provision(self, device_id: str, *, by: str, rotate: bool = False) -> Issued:
        """Issue `device_id` its secret: once, or again with `rotate` (the old one stops working)."""
        try:
            topics.check_device_id(device_id)
        except MessageError as exc:
            raise IdentityError("BAD_DEVICE_ID", str(exc), f"设备编号无效：{device_id!r}") from exc
        async with self._pool.connection() as conn, conn.transaction():
            row = await fetch_row(conn, queries.LOCK_CREDENTIALS, (device_id,))
            if row is not None and not rotate:
                raise IdentityError(
                    "ALREADY_PROVISIONED",
                    f"{device_id} already has credentials (generation {row[0]}); rotate to issue new ones",
                    f"设备 {device_id} 已发放过凭据（第 {row[0]} 代）；如需重发请轮换",
                )
            generation = 1 if row is None else row[0] + 1
            await execute(conn, queries.ISSUE, (device_id, generation, by))
        log.info("device credentials issued", device_id=device_id, generation=generation, by=by)
        return Issued(device_id, generation, self.secret(device_id, generation))

    async def provision_many(self, device_ids: list[str], *, by: str) -> dict[str, bytes]:
        """Secrets of devices provisioned now or before (the simulators' and the demo's fleet)."""
        async with self._pool.connection() as conn:
            await execute(conn, queries.ISSUE_MISSING, (device_ids, by))
            rows = await fetch_rows(conn, queries.GENERATIONS, (device_ids,))
        return {device_id: self.secret(device_id, generation) for device_id, generation in rows}

    async def revoke(self, device_id: str, *, by: str) -> CredentialStatus:
        status = await fetch_model(self._pool, CredentialStatus, queries.REVOKE, (by, device_id))
        if status is None:
            raise IdentityError("NOT_PROVISIONED", f"{device_id} has no credentials", f"设备 {device_id} 没有凭据")
        log.warning("device credentials revoked", device_id=device_id, by=by)
        return status

    async def status(self, device_id: str) -> CredentialStatus | None:
        return await fetch_model(self._pool, CredentialStatus, queries.STATUS, (device_id,))

    async def current_generation(self, device_id: str) -> int | None:
        """The generation a connect must prove, None if never provisioned or revoked."""
        row = await fetch_row(self._pool, queries.CURRENT_GENERATION, (device_id,))
        return None if row is None else int(row[0])


async def record_clock_refusal(pool: AsyncConnectionPool, device_id: str, skew_s: int) -> None:
    """Keep that the broker refused `device_id` because its clock was `skew_s` off."""
    await execute(pool, queries.RECORD_CLOCK_REFUSAL, (device_id, skew_s))


async def record_certificate(pool: AsyncConnectionPool, device_id: str, serial: int) -> bool:
    """Keep a client certificate's serial with the device's credentials (for the CRL);
    False if the device is not provisioned."""
    return await execute(pool, queries.RECORD_CERTIFICATE, (serial, device_id)) == 1


async def revoked_certificate_serials(pool: AsyncConnectionPool) -> list[int]:
    """The serials of the client certificates of revoked devices: the CRL's content."""
    return [int(serial) for (serial,) in await fetch_rows(pool, queries.REVOKED_SERIALS)]


# A device refused for its clock retries every few seconds: its refusal is recorded this often.
CLOCK_NOTE_EVERY_S = 60.0


class BrokerAuthority:
    """What the broker asks at every connect: is this a server account or a device with a valid,
    current credential? Refusals are logged with the reason and never say it to the client."""

    def __init__(
        self,
        credentials: DeviceCredentials,
        servers: Mapping[str, str],
        *,
        max_skew_s: int = DEFAULT_MAX_SKEW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._servers = dict(servers)
        self._max_skew_s = max_skew_s
        self._clock = clock
        self._clock_noted: dict[str, float] = {}

    async def _clock_refused(self, device_id: str, exc: ClockSkewError) -> None:
        """Record a clock refusal (once a minute per device at most: a device retries often)."""
        now = time.monotonic()
        if now - self._clock_noted.get(device_id, -1e9) < CLOCK_NOTE_EVERY_S:
            return
        if len(self._clock_noted) > 100_000:
            self._clock_noted.clear()
        self._clock_noted[device_id] = now
        try:
            await record_clock_refusal(self._credentials.pool, device_id, exc.skew_s)
        except Exception:
            log.exception("could not record a clock refusal", device_id=device_id)

    def account_of(self, username: str) -> Account:
        """The account an authenticated username stands for."""
        kind = AccountKind.SERVER if username in self._servers else AccountKind.DEVICE
        return Account(username, kind)

    async def authenticate(self, username: str | None, password: str | None, *, client_id: str = "") -> Account | None:
        """The account, or None (logged with the reason, which the client is never told)."""
        try:
            return await self._verify(username or "", password, client_id)
        except _RefusedError as exc:
            log.warning(
                "broker refused a connect", reason=str(exc), username=(username or "")[:80], client_id=client_id[:80]
            )
            return None

    async def _verify(self, username: str, password: str | None, client_id: str) -> Account:
        if not username or password is None:
            raise _RefusedError("no username or password")
        expected = self._servers.get(username)
        if expected is not None:
            if not hmac.compare_digest(expected.encode(), password.encode()):
                raise _RefusedError("wrong server account password")
            return Account(username, AccountKind.SERVER)
        if topics.DEVICE_ID_PATTERN.fullmatch(username) is None:
            raise _RefusedError("username is neither a server account nor a device id")
        if client_id != username and not client_id.startswith(f"{username}-"):
            # A device taking another's client id would take over its session and queued announces.
            raise _RefusedError("a device's client id must be its device id")
        try:
            generation = await self._credentials.current_generation(username)
        except Exception as exc:
            log.exception("broker could not check a device's credentials", device_id=username)
            raise _RefusedError("credentials could not be checked (database)") from exc
        if generation is None:
            raise _RefusedError("device not provisioned, or revoked")
        secret = self._credentials.secret(username, generation)
        try:
            check_mqtt_password(secret, username, password, self._clock(), max_skew_s=self._max_skew_s)
        except ClockSkewError as exc:
            await self._clock_refused(username, exc)
            raise _RefusedError(str(exc)) from exc
        except CredentialError as exc:
            raise _RefusedError(str(exc)) from exc
        return Account(username, AccountKind.DEVICE)


class _RefusedError(FleetError):
    """A connect the broker refuses; the reason is logged, never told to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__("CONNECT_REFUSED", reason, "连接被拒绝")
