"""The SQL of the quarantine."""

from __future__ import annotations

from typing import Final

# One message held, or one more copy of it: (digest, consumer, topic, device_id, reason, error,
# payload, payload_bytes, at). Returns (copies,).
HOLD: Final = (
    "INSERT INTO quarantine (digest, consumer, topic, device_id, reason, error, payload, payload_bytes,"
    " first_at, last_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (digest) DO UPDATE SET copies = quarantine.copies + 1, last_at = EXCLUDED.last_at"
    " RETURNING copies"
)
# The columns of a held message as the API shows it (Held), but its payload's `head`.
_HELD: Final = "SELECT id, consumer, topic, device_id, reason, error, payload_bytes, copies, first_at, last_at,"
# The newest held messages, optionally of one device and one consumer: {device_id, consumer, limit}.
RECENT: Final = (
    _HELD + " substring(payload FROM 1 FOR 512) AS head FROM quarantine"
    " WHERE (%(device_id)s::text IS NULL OR device_id = %(device_id)s)"
    " AND (%(consumer)s::text IS NULL OR consumer = %(consumer)s)"
    " ORDER BY last_at DESC, id DESC LIMIT %(limit)s"
)
# One held message with all its bytes: (id,).
ONE: Final = _HELD + " payload AS head FROM quarantine WHERE id = %s"
# What is held by consumer and reason: (consumer, reason, messages, copies).
COUNTS: Final = (
    "SELECT consumer, reason, count(*) AS messages, sum(copies)::bigint AS copies"
    " FROM quarantine GROUP BY consumer, reason ORDER BY consumer, reason"
)
# Devices that sent at least %(min)s held messages since %(since)s: (device_id, messages, reasons).
POISONERS: Final = (
    "SELECT device_id, count(*) AS messages, array_agg(DISTINCT reason ORDER BY reason) AS reasons,"
    " max(last_at) AS last_at FROM quarantine"
    " WHERE device_id IS NOT NULL AND last_at >= %(since)s GROUP BY device_id HAVING count(*) >= %(min)s"
)
# Purge: by ids, by device, or everything held before a time: {ids, device_id, before}.
PURGE: Final = (
    "DELETE FROM quarantine WHERE (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s))"
    " AND (%(device_id)s::text IS NULL OR device_id = %(device_id)s)"
    " AND (%(before)s::timestamptz IS NULL OR last_at < %(before)s)"
)
