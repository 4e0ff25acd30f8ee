"""Where a device sits: city → district (商圈) → store → merchant → device, said once.

A device belongs to its merchant's store, else to the store the registry gave it (a device in
stock or not yet bound). Every fleet query that places a device (lists, reach, figures, tasks,
OTA targeting) joins through `DEVICE_HIERARCHY` and names its store with `STORE_OF_DEVICE`, so a
rebound device is everywhere in its new merchant's store.

What a merchant owns is reached by who owned it when it was made, not by where the device is
now: a payment is its merchant's as recorded (`PAYMENT_WITHIN_REACH`), a task its store's as
opened (`TASK_WITHIN_REACH`). So after a device moves from merchant B to merchant A, A and A's
field agent see the device's payments and tasks from A's period only.
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

# What a principal reaches (`Principal.reach()`): (stores, merchant id), None: no limit.
Reach = tuple[Iterable[str] | None, str | None]
WHOLE_FLEET: Final[Reach] = (None, None)


def reach_params(reach: Reach) -> dict[str, Any]:
    """The %(stores)s and %(merchant)s of the WITHIN_REACH fragments."""
    stores, merchant = reach
    return {"stores": sorted(stores) if stores is not None else None, "merchant": merchant}
