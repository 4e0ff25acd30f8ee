"""Where a device sits: city → district (商圈) → store → merchant → device, said once.

A device belongs to its merchant's store, else to the store the registry gave it (a device in
stock or not yet bound). Every fleet query that places a device (lists, reach, figures, tasks,
OTA targeting) joins through `DEVICE_HIERARCHY` and names its store with `STORE_OF_DEVICE`, so a
rebound device is everywhere in its new merchant's store.

What a merchant owns is reached by who owned it when it was made, not by where the device is
now: a payment is its merchant's as recorded (`PAYMENT_WITHIN_REACH`), a task its store's as
opened (`TASK_WITHIN_REACH`), a command or the settings by the merchant and store their device had
when they were sent (`COMMAND_WITHIN_REACH`, `SETTINGS_WITHIN_REACH`), and a device's own record
(states, events) by a merchant from their binding on (`MERCHANT_PERIOD`). So after a device
moves from merchant B to merchant A, A and A's field agent see the device's past from A's period
only. One fragment per kind of record; no route decides reach on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

# The store of a device, over the aliases of DEVICE_HIERARCHY.
STORE_OF_DEVICE: Final = "COALESCE(m.store_id, d.store_id)"

# A device with its place in the hierarchy, under the aliases every fleet query uses: d device,
# b binding, m merchant, st store (the merchant's, else the device's own), di district.
DEVICE_HIERARCHY: Final = (
    "devices d LEFT JOIN bindings b ON b.device_id = d.device_id"
    " LEFT JOIN merchants m ON m.merchant_id = b.merchant_id"
    f" LEFT JOIN stores st ON st.store_id = {STORE_OF_DEVICE}"
    " LEFT JOIN districts di ON di.district_id = st.district_id"
)

# A payment `p` within the reach named by %(merchant)s (a merchant's own) and %(stores)s (the
# merchants of those stores); NULL: no limit on that side (`Principal.reach()`).
PAYMENT_WITHIN_REACH: Final = (
    "(%(merchant)s::text IS NULL OR p.merchant_id = %(merchant)s)"
    " AND (%(stores)s::text[] IS NULL OR p.merchant_id IN"
    " (SELECT merchant_id FROM merchants WHERE store_id = ANY(%(stores)s)))"
)
# A task `t` within the same reach: its store's as opened; merchants see no tasks.
TASK_WITHIN_REACH: Final = "%(merchant)s::text IS NULL AND (%(stores)s::text[] IS NULL OR t.store_id = ANY(%(stores)s))"


def _kept_within_reach(alias: str) -> str:
    """A record `alias` that keeps the merchant and store its device had when it was made
    (`merchant_id`, `store_id`; NULL: made before they were kept, reached by ops only)."""
    return (
        f"(%(merchant)s::text IS NULL OR {alias}.merchant_id = %(merchant)s)"
        f" AND (%(stores)s::text[] IS NULL OR {alias}.store_id = ANY(%(stores)s))"
    )


# A remote command `c` and the settings `s` within the same reach.
COMMAND_WITHIN_REACH: Final = _kept_within_reach("c")
SETTINGS_WITHIN_REACH: Final = _kept_within_reach("s")


def merchant_period(at: str, device: str = "%(d)s") -> str:
    """A device's own record at time `at` within reach: for a merchant, only from the day the
    device was bound to them (so not its previous merchant's); no limit for anyone else."""
    return (
        f"(%(merchant)s::text IS NULL OR {at} >= (SELECT bound_at FROM bindings"  # noqa: S608 - our own column names.
        f" WHERE device_id = {device} AND merchant_id = %(merchant)s))"
    )


# What a principal reaches (`Principal.reach()`): (stores, merchant id), None: no limit.
Reach = tuple[Iterable[str] | None, str | None]
WHOLE_FLEET: Final[Reach] = (None, None)


def reach_params(reach: Reach) -> dict[str, Any]:
    """The %(stores)s and %(merchant)s of the WITHIN_REACH fragments."""
    stores, merchant = reach
    return {"stores": sorted(stores) if stores is not None else None, "merchant": merchant}
