"""The notification outbox: news about tasks queued in the transaction that made it, so nothing
is told that did not happen and nothing that happened goes untold.

    await queue_task(cur, task_id, "task.opened", now)            # inside the task's transaction

Each enabled channel that covers the task gets one row: the fleet-wide channels (ops), the
task's store's and the task's field agent's (for a reassignment, the new agent's and the
store's). A row's `(channel, dedup_key)` is unique, so the same news never queues twice however
often the finding merges. The notifier (`sender.Notifier`) sends the rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from psycopg import AsyncCursor

from fleet_server.db.hierarchy import DEVICE_HIERARCHY
from fleet_server.notify.formats import Notice

# What a task's message says: (task_id). Rows: (task, kind, device, serial, merchant, store
# name, store id, agent id, action zh, action en).
TASK_FACTS: Final = (
    "SELECT t.task_id, t.kind, t.device_id, COALESCE(d.serial, d.reported_serial), m.name, st.name,"  # noqa: S608
    " t.store_id, t.agent_id, t.action_zh, t.action_en"
    f" FROM tasks t LEFT JOIN ({DEVICE_HIERARCHY}) ON d.device_id = t.device_id WHERE t.task_id = %s"
)
# One row per enabled channel covering the store and agent given (fleet-wide ones too unless
# %(fleet)s is false), skipping news already queued for it.
QUEUE: Final = """
INSERT INTO notify_outbox (channel_id, dedup_key, task_id, notice, created_at, next_attempt_at)
SELECT c.channel_id, %(key)s, %(task)s, %(notice)s, %(now)s, %(now)s FROM notify_channels c
WHERE c.enabled AND ((%(fleet)s AND c.store_id IS NULL AND c.agent_id IS NULL)
    OR c.store_id = %(store)s OR c.agent_id = %(agent)s)
ON CONFLICT (channel_id, dedup_key) DO NOTHING
"""
QUEUE_ONE: Final = """
INSERT INTO notify_outbox (channel_id, dedup_key, notice, created_at, next_attempt_at)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT (channel_id, dedup_key) DO NOTHING
"""

KIND_NAMES_ZH: Final = {
    "faulty": "设备故障",
    "lost": "设备失联",
    "idle": "设备停用",
    "relocated": "设备移位",
    "clock": "设备时钟异常",
    "degraded": "设备需维护",
}
KIND_NAMES_EN: Final = {
    "faulty": "Device faulty",
    "lost": "Device missing",
    "idle": "Device idle",
    "relocated": "Device moved",
    "clock": "Device clock broken",
    "degraded": "Device needs maintenance",
}
EVENT_ZH: Final = {"task.opened": "新工单", "task.assigned": "工单已指派给您", "task.escalated": "工单超时升级"}
EVENT_EN: Final = {"task.opened": "new task", "task.assigned": "task assigned to you", "task.escalated": "task overdue"}


def task_notice(event: str, facts: tuple[Any, ...]) -> Notice:
    task_id, kind, device, serial, merchant, store, _, _, action_zh, action_en = facts
    return Notice(
        event=event,
        title_zh=f"{KIND_NAMES_ZH.get(kind, kind)} · {EVENT_ZH.get(event, event)} #{task_id}",
        title_en=f"{KIND_NAMES_EN.get(kind, kind)}: {EVENT_EN.get(event, event)} #{task_id}",
        device_id=device,
        serial=serial,
        merchant=merchant,
        store=store,
        problem_zh=KIND_NAMES_ZH.get(kind, kind),
        action_zh=action_zh,
        action_en=action_en,
        task_id=task_id,
        path=f"/agent#task={task_id}",
    )


async def queue_task(
    cur: AsyncCursor[Any], task_id: int, event: str, now: datetime, *, to_agent: str | None = None
) -> int:
    """Queue `event` of the task for the channels that cover it, in the caller's transaction;
    returns the rows queued. `to_agent`: a reassignment, told to the new agent and the store
    (not again to ops, who made it)."""
    await cur.execute(TASK_FACTS, (task_id,))
    facts = await cur.fetchone()
    if facts is None:
        return 0
    notice = task_notice(event, facts)
    key = f"task:{task_id}:{event}" + (f":{to_agent}" if to_agent else "")
    params = {
        "key": key,
        "task": task_id,
        "notice": notice.model_dump_json(),
        "now": now,
        "fleet": to_agent is None,
        "store": facts[6],
        "agent": to_agent or facts[7],
    }
    await cur.execute(QUEUE, params)
    return max(cur.rowcount, 0)
