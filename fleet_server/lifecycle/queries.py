"""The SQL of the device lifecycle (`book`, `stock`)."""

from __future__ import annotations

from typing import Final

from fleet_server.db.fetch import statement
from fleet_server.db.hierarchy import DEVICE_HIERARCHY, STORE_OF_DEVICE
from fleet_server.devices.states import DeviceState
from fleet_server.inspection.rules import TaskStatus
from fleet_server.lifecycle.stages import Stage

_NAMES: Final = {"retired": DeviceState.RETIRED, "closed": TaskStatus.CLOSED, "in_service": Stage.IN_SERVICE}

# A device by id or serial, where it stands. Rows: DeviceLife (without `allowed`).
_LIFE: Final = (
    "SELECT d.device_id, d.serial, d.model, d.stage, d.stage_since, "  # noqa: S608 - constant fragments.
    + STORE_OF_DEVICE
    + " AS store_id, COALESCE(d.agent_id, st.agent_id) AS agent_id, b.merchant_id, m.name AS merchant_name,"
    " d.state, d.installed_at, d.install_lat, d.install_lon, d.install_address"
    f" FROM {DEVICE_HIERARCHY}"
)
FIND: Final = _LIFE + " WHERE d.device_id = %(k)s OR d.serial = %(k)s ORDER BY d.device_id = %(k)s DESC LIMIT 1"
# The same, locked for a change (the rollup lock is taken first: `rollups.lock_shared`).
LOCK: Final = _LIFE + " WHERE d.device_id = %s FOR UPDATE OF d"
# A stage change: (stage, at, device_id), then its log row (device, at, stage, previous, action, by, detail).
SET_STAGE: Final = "UPDATE devices SET stage = %s, stage_since = %s WHERE device_id = %s"
LOG_STAGE: Final = (
    "INSERT INTO device_stages (device_id, at, stage, previous, action, by_login, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
# Allocation to a store and its agent: (store_id, agent_id, device_id).
ALLOCATE: Final = "UPDATE devices SET store_id = %s, agent_id = %s WHERE device_id = %s"
# Back on the shelf: no store, no agent, no installation (the next install records its own).
SHELVE: Final = (
    "UPDATE devices SET store_id = NULL, agent_id = NULL, installed_at = NULL, install_address = NULL,"
    " install_lat = NULL, install_lon = NULL WHERE device_id = %s"
)
# The installation: (at, address, lat, lon, agent_id, device_id); the agent kept when one is given.
INSTALL: Final = (
    "UPDATE devices SET installed_at = %s, install_address = %s, install_lat = %s, install_lon = %s,"
    " agent_id = COALESCE(agent_id, %s), planned_removal = false WHERE device_id = %s"
)
# A merchant's store and name: (store_id, name) or no row.
MERCHANT: Final = "SELECT store_id, name FROM merchants WHERE merchant_id = %s"
# A store and its agent: (agent_id) or no row.
STORE: Final = "SELECT agent_id FROM stores WHERE store_id = %s"
AGENT_KNOWN: Final = "SELECT 1 FROM field_agents WHERE agent_id = %s"
# The old device's open tasks moved to the new one at a swap: (new, now, old). Rows: (task_id).
MOVE_TASKS: Final = statement(
    "UPDATE tasks SET device_id = %s, updated_at = %s WHERE device_id = %s AND status <> {closed} RETURNING task_id",
    **_NAMES,
)
# The test announcement that commissions an install: one row (status) or none.
TEST_ANNOUNCE: Final = (
    "SELECT status FROM device_commands WHERE command_id = %s AND device_id = %s"
    " AND name = 'test_announce' AND issued_at >= %s"
)
# Devices by store, agent and stage; a device registered before the lifecycle counts in service,
# unless it was retired. Rows: StageCount.
COUNTS: Final = statement(
    "SELECT "  # noqa: S608 - constant fragments.
    + STORE_OF_DEVICE
    + " AS store_id, COALESCE(d.agent_id, st.agent_id) AS agent_id, COALESCE(d.stage, {in_service}) AS stage,"
    f" count(*) AS devices FROM {DEVICE_HIERARCHY}"
    " WHERE d.stage IS NOT NULL OR d.state IS NULL OR d.state <> {retired}"
    " GROUP BY 1, 2, 3 ORDER BY 1 NULLS FIRST, 2 NULLS FIRST, 3",
    **_NAMES,
)
# A device's stage changes, newest first. Rows: StageEntry.
HISTORY: Final = (
    "SELECT at, stage, previous, action, by_login, detail FROM device_stages WHERE device_id = %s"
    " ORDER BY at DESC, seq DESC LIMIT %s"
)
# Stock: devices of the file already known: (device_id, serial, stage, state, registered: bound
# to a merchant or placed in a store).
KNOWN: Final = (
    "SELECT d.device_id, d.serial, d.stage, d.state, b.device_id IS NOT NULL OR d.store_id IS NOT NULL"
    " FROM devices d"
    " LEFT JOIN bindings b USING (device_id) WHERE d.device_id = ANY(%(ids)s) OR d.serial = ANY(%(serials)s)"
)
# A device into stock: (device_id, serial, model, at); one seen before keeps its row.
STOCK: Final = (
    "INSERT INTO devices (device_id, serial, model, stage, stage_since) VALUES (%s, %s, %s, 'in_stock', %s)"
    " ON CONFLICT (device_id) DO UPDATE SET serial = EXCLUDED.serial, model = EXCLUDED.model,"
    " stage = EXCLUDED.stage, stage_since = EXCLUDED.stage_since"
)
# Merchants of the stores within reach (NULL: all), or of one store. Rows: MerchantChoice.
MERCHANTS: Final = (
    "SELECT merchant_id, name, store_id FROM merchants"
    " WHERE (%(stores)s::text[] IS NULL OR store_id = ANY(%(stores)s))"
    " AND (%(store)s::text IS NULL OR store_id = %(store)s) ORDER BY store_id, name, merchant_id LIMIT 1000"
)
