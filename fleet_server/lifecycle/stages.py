"""The lifecycle machine: which stage of its life a device is in, and what an action does.

Pure: `next_stage(current, action)` says where an action takes a device, or None when the
action is not allowed there. The operational machine (`devices.states`) runs only while a device
is deployed: from install (Signal.INSTALLED) until it is returned, scrapped or lost
(Signal.RETIRE), so stock on a shelf is in no figure.

    入库 stock ─▶ in_stock ─allocate─▶ allocated ─install─▶ installed ─commission─▶ in_service
                    ▲  ▲                  │ return (unused)    │  return / swap out  │
                    │  └──────────────────┘                    ▼                     ▼
                    │     restock  ◀──────────────────────  returned ◀───────────────┘
                    └── restock ◀── in_repair ◀── repair ──┘    │
                         scrap (in stock, returned, in repair, or broken on site) ─▶ scrapped
            lose (allocated, installed, in_service) ─▶ lost

A device registered before the lifecycle (stage NULL: the registry import) counts as in
service: it may be returned, swapped or lost like one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Stage(StrEnum):
    IN_STOCK = "in_stock"  # 在库
    ALLOCATED = "allocated"  # 已下发: to a store (and its agent), not installed yet
    INSTALLED = "installed"  # 已装机: bound at the merchant, waiting for its test announcement
    IN_SERVICE = "in_service"  # 在用: the test announcement played
    RETURNED = "returned"  # 已回收
    IN_REPAIR = "in_repair"  # 返修中
    SCRAPPED = "scrapped"  # 已报废: final
    LOST = "lost"  # 已挂失: lost or stolen, final


class Action(StrEnum):
    STOCK = "stock"  # 入库: a new device, from the stock CSV (`stock`)
    ALLOCATE = "allocate"  # 下发
    INSTALL = "install"  # 装机
    COMMISSION = "commission"  # the test announcement played: in service
    RETURN = "return"  # 回收 (an allocated device not installed goes back to stock)
    SWAP_OUT = "swap_out"  # 换机: the old device, returned
    REPAIR = "repair"  # 送修
    RESTOCK = "restock"  # 入库 again
    SCRAP = "scrap"  # 报废
    LOSE = "lose"  # 挂失


S = Stage
# Where the operational machine runs: the device is at a merchant.
DEPLOYED: Final = frozenset({S.INSTALLED, S.IN_SERVICE})
# Not at a merchant yet: whatever it sends moves no state (a test switch-on in the warehouse).
UNDEPLOYED: Final = frozenset({S.IN_STOCK, S.ALLOCATED})
FINAL: Final = frozenset({S.SCRAPPED, S.LOST})

_TABLE: Final[dict[tuple[Stage, Action], Stage]] = {
    (S.IN_STOCK, Action.ALLOCATE): S.ALLOCATED,
    (S.ALLOCATED, Action.ALLOCATE): S.ALLOCATED,  # to another store
    (S.ALLOCATED, Action.INSTALL): S.INSTALLED,
    (S.INSTALLED, Action.COMMISSION): S.IN_SERVICE,
    (S.ALLOCATED, Action.RETURN): S.IN_STOCK,
    **{(s, Action.RETURN): S.RETURNED for s in DEPLOYED},
    **{(s, Action.SWAP_OUT): S.RETURNED for s in DEPLOYED},
    (S.RETURNED, Action.REPAIR): S.IN_REPAIR,
    (S.RETURNED, Action.RESTOCK): S.IN_STOCK,
    (S.IN_REPAIR, Action.RESTOCK): S.IN_STOCK,
    **{(s, Action.SCRAP): S.SCRAPPED for s in (S.IN_STOCK, S.RETURNED, S.IN_REPAIR, *DEPLOYED)},
    **{(s, Action.LOSE): S.LOST for s in (S.ALLOCATED, *DEPLOYED)},
}


def effective(stage: Stage | None) -> Stage:
    """A device registered before the lifecycle counts as in service."""
    return S.IN_SERVICE if stage is None else stage


def next_stage(current: Stage | None, action: Action) -> Stage | None:
    """Where `action` takes a device in `current` (None: registered before the lifecycle);
    None when the action is not allowed there."""
    return _TABLE.get((effective(current), action))


def allowed(current: Stage | None) -> list[Action]:
    """The actions a device in `current` allows, in the order of `Action`."""
    return [a for a in Action if next_stage(current, a) is not None]


STAGE_NAMES_ZH: Final = {
    S.IN_STOCK: "在库",
    S.ALLOCATED: "已下发",
    S.INSTALLED: "已装机",
    S.IN_SERVICE: "在用",
    S.RETURNED: "已回收",
    S.IN_REPAIR: "返修中",
    S.SCRAPPED: "已报废",
    S.LOST: "已挂失",
}
ACTION_NAMES_ZH: Final = {
    Action.STOCK: "入库",
    Action.ALLOCATE: "下发",
    Action.INSTALL: "装机",
    Action.COMMISSION: "测试播报通过",
    Action.RETURN: "回收",
    Action.SWAP_OUT: "换机换下",
    Action.REPAIR: "送修",
    Action.RESTOCK: "入库",
    Action.SCRAP: "报废",
    Action.LOSE: "挂失",
}
