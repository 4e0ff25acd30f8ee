"""The SQL of remote commands and the merchant's settings."""

from __future__ import annotations

from typing import Final

from firmware_protocols.messages import CommandStatus
from fleet_server.db.fetch import statement

# A command's status before the device answers; the device's answers are CommandStatus values.
SENT: Final = "sent"
UNSENT: Final = "unsent"  # the broker could not be reached
FINAL_STATUSES: Final = frozenset(
    {CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.REFUSED, CommandStatus.DUPLICATE}
)

_COLUMNS: Final = "command_id, device_id, name, args, issued_by, issued_at, status, reason, result, updated_at"

# A new command, as sent.
INSERT_COMMAND: Final = (
    "INSERT INTO device_commands (command_id, device_id, name, args, issued_by, issued_at, status,"
    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
# One command by id. Rows: CommandView.
COMMAND: Final = f"SELECT {_COLUMNS} FROM device_commands WHERE command_id = %s"  # noqa: S608 - constant columns.
# A device's latest commands, newest first. Rows: CommandView.
RECENT_COMMANDS: Final = f"SELECT {_COLUMNS} FROM device_commands WHERE device_id = %s ORDER BY issued_at DESC LIMIT %s"  # noqa: S608 - constant columns.
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
SETTINGS_OF: Final = (
    "SELECT s.version, s.settings, s.updated_by, s.updated_at, h.device_version, h.device_volume"
    " FROM (SELECT 1) one LEFT JOIN device_settings s ON s.device_id = %(d)s"
    " LEFT JOIN LATERAL (SELECT (payload->>'settings_version')::bigint AS device_version,"
    "  volume AS device_volume FROM device_health WHERE device_id = %(d)s ORDER BY ts DESC LIMIT 1) h"
    " ON true"
)
# The settings as signed and sent, replacing any before.
SAVE_SETTINGS: Final = (
    "INSERT INTO device_settings (device_id, version, settings, updated_by, updated_at)"
    " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (device_id) DO UPDATE SET version = EXCLUDED.version,"
    " settings = EXCLUDED.settings, updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at"
)
