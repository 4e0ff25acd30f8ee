"""Bindings: which merchant each device announces for (one merchant per device).

    bindings = Bindings(pool)
    binding, alert = await bindings.bind("SPK1", "M0001", ttl=timedelta(seconds=120))

A binding refers to a device the fleet knows (in the registry, or connected once) and a
merchant in the registry; others are refused with a clear error. A new binding starts the
merchant's period (`hierarchy.merchant_period`), and binding and unbinding each record an alert
for the device (设备绑定成功 / 设备已解绑): a record of kind `alert` with one delivery, retried
like any announcement, which the caller publishes.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols.messages import AlertCode, AnnounceKind, Channel
from fleet_server.db.fetch import execute, fetch_model, fetch_models, fetch_row, fetch_rows
from fleet_server.errors import BindingError
from payment_bridge import queries
from payment_bridge.store import PendingDelivery


class Binding(BaseModel):
    device_id: str
    merchant_id: str
    bound_at: datetime


class Bindings:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def bind(self, device_id: str, merchant_id: str, *, ttl: timedelta) -> tuple[Binding, PendingDelivery | None]:
        """Bind a registered device to a registered merchant, moving it from any previous one
        (one merchant per device); a new binding starts the merchant's period
        (`hierarchy.merchant_period`) and records the device's 设备绑定成功 alert, returned for
        publishing (None when the device was already this merchant's)."""
        async with self._pool.connection() as conn, conn.transaction():
            [(device_known, merchant_known)] = await fetch_rows(
                conn, queries.REGISTERED, {"d": device_id, "m": merchant_id}
            )
            if not device_known:
                raise BindingError(
                    "DEVICE_NOT_REGISTERED",
                    f"device {device_id} is not known to the fleet (not in the registry, never connected);"
                    " import it first (haodian fleet import)",
                    f"设备 {device_id} 不在设备台账中，请先导入",
                )
            if not merchant_known:
                raise BindingError(
                    "MERCHANT_NOT_REGISTERED",
                    f"merchant {merchant_id} is not in the registry; import it first (haodian fleet import)",
                    f"商户 {merchant_id} 不在台账中，请先导入",
                )
            before = await fetch_row(conn, queries.LOCK_BINDING, (device_id,))
            binding = await fetch_model(conn, Binding, queries.BIND, (device_id, merchant_id))
            assert binding is not None  # noqa: S101 - an upsert with RETURNING always returns its row.
            if before is not None and before[0] == merchant_id:
                return binding, None
            return binding, await _alert(conn, device_id, merchant_id, AlertCode.BOUND, ttl)

    async def unbind(self, device_id: str, *, ttl: timedelta) -> PendingDelivery:
        """Unbind a device: its 设备已解绑 alert (its last merchant's), returned for publishing."""
        async with self._pool.connection() as conn, conn.transaction():
            before = await fetch_row(conn, queries.LOCK_BINDING, (device_id,))
            if before is None:
                raise BindingError("BINDING_NOT_FOUND", f"device {device_id} is not bound", f"设备 {device_id} 未绑定")
            await execute(conn, queries.UNBIND, (device_id,))
            return await _alert(conn, device_id, before[0], AlertCode.UNBOUND, ttl)

    async def bindings(
        self, *, merchant_id: str | None = None, device_id: str | None = None, serial: str | None = None
    ) -> list[Binding]:
        """Bindings by merchant, device id or the serial number printed on the device (the one in
        the registry, or the one the device reported)."""
        params = {"m": merchant_id, "d": device_id, "s": serial}
        return await fetch_models(self._pool, Binding, queries.BINDINGS, params)


async def _alert(
    conn: AsyncConnection[Any], device_id: str, merchant_id: str, code: AlertCode, ttl: timedelta
) -> PendingDelivery:
    """Record an alert for one device (in the caller's transaction), delivered and retried like
    any announcement; the merchant's whose period it belongs to."""
    at = datetime.now(tz=UTC)
    alert_id = f"alert:{code.value}:{secrets.token_hex(8)}"
    row = {"id": alert_id, "m": merchant_id, "code": code.value, "at": at, "until": at + ttl, "d": device_id}
    await execute(conn, queries.RECORD_ALERT, row)
    return PendingDelivery(
        payment_id=alert_id,
        device_id=device_id,
        merchant_id=merchant_id,
        amount_fen=0,
        channel=Channel.OTHER.value,
        kind=AnnounceKind.ALERT.value,
        paid_at=at,
        received_at=at,
        expires_at=at + ttl,
        alert=code.value,
    )
