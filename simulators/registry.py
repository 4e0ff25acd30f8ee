"""The least registry a simulation or a test needs before it binds: a binding refers to a device
and a merchant in the registry (the bridge refuses others), so a world registers them first.

    await register(pool, devices=["SPK1", "SPK2"], merchants=["M0001"])   # then POST /bindings
    register_now(database_url, devices=[...], merchants=[...])            # from a process outside

One city, district and store (`S-SIM` unless named); nothing is bound, so the binding (and the
device's 设备绑定成功) is the caller's to make through the API. Registering again changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

_PLACE: Final = (
    "INSERT INTO cities VALUES ('SIM', '模拟城市') ON CONFLICT DO NOTHING",
    "INSERT INTO districts VALUES ('SIM-D', 'SIM', '模拟商圈') ON CONFLICT DO NOTHING",
    "INSERT INTO stores (store_id, district_id, name) VALUES (%(store)s, 'SIM-D', %(store)s) ON CONFLICT DO NOTHING",
)
_MERCHANTS: Final = (
    "INSERT INTO merchants (merchant_id, store_id, name) SELECT m, %(store)s, m FROM unnest(%(merchants)s::text[]) m"
    " ON CONFLICT DO NOTHING"
)
_DEVICES: Final = (
    "INSERT INTO devices (device_id, model, store_id) SELECT d, 'HD-S1', %(store)s FROM unnest(%(devices)s::text[]) d"
    " ON CONFLICT (device_id) DO UPDATE SET store_id = COALESCE(devices.store_id, EXCLUDED.store_id)"
)


def _params(devices: Iterable[str], merchants: Iterable[str], store_id: str) -> dict[str, Any]:
    return {"store": store_id, "devices": sorted(set(devices)), "merchants": sorted(set(merchants))}


async def register(
    pool: AsyncConnectionPool, *, devices: Iterable[str] = (), merchants: Iterable[str] = (), store_id: str = "S-SIM"
) -> None:
    """Put `devices` and `merchants` in the registry, in store `store_id`."""
    params = _params(devices, merchants, store_id)
    async with pool.connection() as conn, conn.transaction():
        for statement in (*_PLACE, _MERCHANTS, _DEVICES):
            await conn.execute(statement, params)


def register_now(
    database_url: str, *, devices: Iterable[str] = (), merchants: Iterable[str] = (), store_id: str = "S-SIM"
) -> None:
    """The same, from outside the server's event loop (the fault rig, the benchmarks)."""
    params = _params(devices, merchants, store_id)
    with psycopg.connect(database_url) as conn:
        for statement in (*_PLACE, _MERCHANTS, _DEVICES):
            conn.execute(statement, params)
