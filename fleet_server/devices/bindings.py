"""Bindings: which merchant each device announces for (one merchant per device).

    bindings = Bindings(pool)
    binding, alert = await bindings.bind("SPK1", "M0001", ttl=timedelta(seconds=120))

A binding refers to a device the fleet knows (in the registry, or connected once) and a
merchant in the registry; others are refused with a clear error. A new binding starts the
merchant's period (`hierarchy.merchant_period`), and binding and unbinding each record an alert
for the device (设备绑定成功 / 设备已解绑): a record of kind `alert` with one delivery, retried
by the payment bridge like any announcement. The caller gets the `Alert` to publish at once
(the bridge, `PaymentBridge.publish_alert`); one not published is the bridge's retry scan's.

The payment bridge's API binds for the backend; the device lifecycle (`fleet_server.lifecycle`)
binds in its own transaction at install and swap (`bind_in`, `unbind_in`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols.messages import AlertCode
from fleet_server.db.fetch import execute, fetch_model, fetch_models, fetch_row, fetch_rows
from fleet_server.errors import BindingError

# A device bound to a merchant, moved from any previous one; bound again to the same merchant it
# keeps the time it was first bound (the merchant's period, `hierarchy.merchant_period`). Rows: Binding.
BIND: Final = (
    "INSERT INTO bindings AS b (device_id, merchant_id) VALUES (%s, %s)"
    " ON CONFLICT (device_id) DO UPDATE SET merchant_id = EXCLUDED.merchant_id,"
    " bound_at = CASE WHEN b.merchant_id = EXCLUDED.merchant_id THEN b.bound_at ELSE now() END"
    " RETURNING device_id, merchant_id, bound_at"
)
# The previous binding of a device, locked while it changes: one row (merchant_id), or none.
LOCK_BINDING: Final = "SELECT merchant_id FROM bindings WHERE device_id = %s FOR UPDATE"
UNBIND: Final = "DELETE FROM bindings WHERE device_id = %s"
# Whether the device and the merchant are in the registry: one row (device, merchant) of booleans.
REGISTERED: Final = (
    "SELECT EXISTS (SELECT 1 FROM devices WHERE device_id = %(d)s),"
    " EXISTS (SELECT 1 FROM merchants WHERE merchant_id = %(m)s)"
)
# An alert for one device (bound / unbound), as a record of kind 'alert' with one delivery, so it
# is retried like any announcement: (id, merchant, alert code, received at, expires at, device).
RECORD_ALERT: Final = (
    "WITH p AS (INSERT INTO payments (payment_id, source, notify_id, merchant_id, amount_fen, channel, kind,"
    " status, paid_at, received_at, raw) VALUES (%(id)s, 'binding', %(id)s, %(m)s, 0, 'other', 'alert', %(code)s,"
    " %(at)s, %(at)s, '{}') RETURNING payment_id)"
    " INSERT INTO deliveries (payment_id, device_id, expires_at, last_published_at, attempts)"
    " SELECT payment_id, %(d)s, %(until)s, %(at)s, 1 FROM p"
)
# Bindings by merchant, device id or a serial (the registry's or the reported one); NULL matches
# all. Rows: Binding.
BINDINGS: Final = (
    "SELECT device_id, merchant_id, bound_at FROM bindings"
    " WHERE (%(m)s::text IS NULL OR merchant_id = %(m)s) AND (%(d)s::text IS NULL OR device_id = %(d)s)"
    " AND (%(s)s::text IS NULL OR device_id IN"
    "   (SELECT device_id FROM devices WHERE serial = %(s)s OR reported_serial = %(s)s))"
    " ORDER BY merchant_id, device_id"
)


class Binding(BaseModel):
    device_id: str
    merchant_id: str
    bound_at: datetime


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert recorded for one device, pending until the device acks it."""

    alert_id: str
    device_id: str
    merchant_id: str
    code: AlertCode
    at: datetime
    expires_at: datetime


class Bindings:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def bind(self, device_id: str, merchant_id: str, *, ttl: timedelta) -> tuple[Binding, Alert | None]:
        """Bind a registered device to a registered merchant, moving it from any previous one
        (one merchant per device); a new binding starts the merchant's period and records the
        device's 设备绑定成功 alert, returned for publishing (None when the device was already
        this merchant's)."""
        async with self._pool.connection() as conn, conn.transaction():
            return await bind_in(conn, device_id, merchant_id, ttl=ttl)

    async def unbind(self, device_id: str, *, ttl: timedelta) -> Alert:
        """Unbind a device: its 设备已解绑 alert (its last merchant's), returned for publishing."""
        async with self._pool.connection() as conn, conn.transaction():
            alert = await unbind_in(conn, device_id, ttl=ttl)
        if alert is None:
            raise BindingError("BINDING_NOT_FOUND", f"device {device_id} is not bound", f"设备 {device_id} 未绑定")
        return alert

    async def bindings(
        self, *, merchant_id: str | None = None, device_id: str | None = None, serial: str | None = None
    ) -> list[Binding]:
        """Bindings by merchant, device id or the serial number printed on the device (the one in
        the registry, or the one the device reported)."""
        params = {"m": merchant_id, "d": device_id, "s": serial}
        return await fetch_models(self._pool, Binding, BINDINGS, params)


async def bind_in(
    conn: AsyncConnection[Any], device_id: str, merchant_id: str, *, ttl: timedelta
) -> tuple[Binding, Alert | None]:
    """`Bindings.bind` in the caller's transaction."""
    [(device_known, merchant_known)] = await fetch_rows(conn, REGISTERED, {"d": device_id, "m": merchant_id})
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
    before = await fetch_row(conn, LOCK_BINDING, (device_id,))
    binding = await fetch_model(conn, Binding, BIND, (device_id, merchant_id))
    assert binding is not None  # noqa: S101 - an upsert with RETURNING always returns its row.
    if before is not None and before[0] == merchant_id:
        return binding, None
    return binding, await _alert(conn, device_id, merchant_id, AlertCode.BOUND, ttl)


async def unbind_in(conn: AsyncConnection[Any], device_id: str, *, ttl: timedelta, alert: bool = True) -> Alert | None:
    """Unbind a device in the caller's transaction: its 设备已解绑 alert (None when it was not
    bound, or `alert` is false: a broken device swapped out has nobody to tell)."""
    before = await fetch_row(conn, LOCK_BINDING, (device_id,))
    if before is None:
        return None
    await execute(conn, UNBIND, (device_id,))
    return await _alert(conn, device_id, before[0], AlertCode.UNBOUND, ttl) if alert else None


async def _alert(
    conn: AsyncConnection[Any], device_id: str, merchant_id: str, code: AlertCode, ttl: timedelta
) -> Alert:
    """Record an alert for one device (in the caller's transaction), delivered and retried like
    any announcement; the merchant's whose period it belongs to."""
    at = datetime.now(tz=UTC)
    alert_id = f"alert:{code.value}:{secrets.token_hex(8)}"
    row = {"id": alert_id, "m": merchant_id, "code": code.value, "at": at, "until": at + ttl, "d": device_id}
    await execute(conn, RECORD_ALERT, row)
    return Alert(alert_id, device_id, merchant_id, code, at, at + ttl)
