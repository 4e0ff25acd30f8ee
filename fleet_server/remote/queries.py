"""The SQL of remote commands and the merchant's settings."""

from __future__ import annotations

from typing import Final

from firmware_protocols.messages import CommandStatus
from fleet_server.db.fetch import statement
from fleet_server.db.hierarchy import COMMAND_WITHIN_REACH, DEVICE_HIERARCHY, SETTINGS_WITHIN_REACH, STORE_OF_DEVICE

# A command's status before the device answers; the device's answers are CommandStatus values.
SENT: Final = "sent"
UNSENT: Final = "unsent"  # the broker could not be reached
FINAL_STATUSES: Final = frozenset(
    {CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.REFUSED, CommandStatus.DUPLICATE}
)

_COLUMNS: Final = "command_id, device_id, name, args, issued_by, issued_at, status, reason, result, updated_at"

# A new command, as sent, with the merchant and store its device has now (COMMAND_WITHIN_REACH);
# no row when the device is unknown.
INSERT_COMMAND: Final = (
    "INSERT INTO device_commands (command_id, device_id, name, args, issued_by, issued_at, status,"  # noqa: S608 - constant fragments; values are parameters.
    " updated_at, merchant_id, store_id) SELECT %(id)s, d.device_id, %(name)s, %(args)s, %(by)s, %(at)s,"
    f" %(status)s, %(at)s, b.merchant_id, {STORE_OF_DEVICE} FROM {DEVICE_HIERARCHY} WHERE d.device_id = %(d)s"
)
# One command by id, sent to device %(d)s, within reach (`reach_params`). Rows: CommandView.
COMMAND: Final = (
    f"SELECT {_COLUMNS} FROM device_commands c WHERE command_id = %(id)s"  # noqa: S608 - constant fragments.
    f" AND (%(d)s::text IS NULL OR device_id = %(d)s) AND {COMMAND_WITHIN_REACH}"
)
# A device's latest commands within reach, newest first. Rows: CommandView.
RECENT_COMMANDS: Final = (
    f"SELECT {_COLUMNS} FROM device_commands c WHERE device_id = %(d)s AND {COMMAND_WITHIN_REACH}"  # noqa: S608 - constant fragments.
    " ORDER BY issued_at DESC LIMIT %(limit)s"
)
# A command's status from the device (or from the sender): a final answer is never overwritten
# by a late "accepted", and a result naming another device's command changes nothing.
SET_STATUS: Final = statement(
    "UPDATE device_commands SET status = %(status)s, reason = %(reason)s, result = %(result)s,"
    " updated_at = now() WHERE command_id = %(id)s"
    " AND (%(device)s::text IS NULL OR device_id = %(device)s)"
    " AND NOT status = ANY({final})",
    final=FINAL_STATUSES,
)

# The settings saved for a device and those its latest health report says it holds: one row
# (version, settings, updated_by, updated_at, device_version, device_volume), NULLs where none.
# The settings are the device's as in force now, for whoever reaches the device; who saved them
# only for those who reach the period they were saved in (SETTINGS_WITHIN_REACH).
SETTINGS_OF: Final = (
    "SELECT s.version, s.settings, s.updated_at, h.device_version, h.device_volume,"  # noqa: S608 - constant fragments.
    f" CASE WHEN {SETTINGS_WITHIN_REACH} THEN s.updated_by END AS updated_by"
    " FROM (SELECT 1) one LEFT JOIN device_settings s ON s.device_id = %(d)s"
    " LEFT JOIN LATERAL (SELECT (payload->>'settings_version')::bigint AS device_version,"
    "  volume AS device_volume FROM device_health WHERE device_id = %(d)s ORDER BY ts DESC LIMIT 1) h"
    " ON true"
)
# The settings as signed and sent, replacing any before, with the merchant and store the device
# has now: (device, version, settings, by).
SAVE_SETTINGS: Final = (
    "INSERT INTO device_settings (device_id, version, settings, updated_by, updated_at, merchant_id, store_id)"  # noqa: S608 - constant fragments.
    f" SELECT d.device_id, %s, %s, %s, now(), b.merchant_id, {STORE_OF_DEVICE} FROM {DEVICE_HIERARCHY}"
    " WHERE d.device_id = %s ON CONFLICT (device_id) DO UPDATE SET version = EXCLUDED.version,"
    " settings = EXCLUDED.settings, updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at,"
    " merchant_id = EXCLUDED.merchant_id, store_id = EXCLUDED.store_id"
)
