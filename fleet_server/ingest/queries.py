"""The SQL of the ingest: each table gets one statement per batch whatever the batch's size."""

from __future__ import annotations

from typing import Final

# Each table gets one statement per batch whatever the batch's size: the rows go in as arrays
# through unnest() (upserts) or COPY (append-only tables). Device rows are touched in device id
# order so that ingest processes sharing the stream lock them in the same order and never deadlock.
UPSERT_DEVICES: Final = """
INSERT INTO devices (device_id, first_contact, last_seen, last_cell, last_gps_lat, last_gps_lon, health_interval_s)
SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[], %s::float8[], %s::float8[],
    %s::float8[])
ORDER BY 1
ON CONFLICT (device_id) DO UPDATE SET last_seen = GREATEST(devices.last_seen, EXCLUDED.last_seen),
    first_contact = LEAST(devices.first_contact, EXCLUDED.first_contact),
    last_cell = COALESCE(EXCLUDED.last_cell, devices.last_cell),
    last_gps_lat = COALESCE(EXCLUDED.last_gps_lat, devices.last_gps_lat),
    last_gps_lon = COALESCE(EXCLUDED.last_gps_lon, devices.last_gps_lon),
    health_interval_s = COALESCE(EXCLUDED.health_interval_s, devices.health_interval_s)
"""
HELLOS: Final = """
UPDATE devices d SET reported_serial = h.serial, model = h.model, firmware = h.firmware, boot_id = h.boot_id,
    slot = h.slot, hello_at = h.at
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[])
    AS h(serial, model, firmware, boot_id, slot, at, device_id)
WHERE d.device_id = h.device_id
"""
# Ordered by arrival at the server: a last will carries the time its device connected, so the
# device's own clock cannot order it against the "online" that followed.
# An online presence names the session an offline one must match (its `session`, if any).
PRESENCES: Final = """
UPDATE devices d SET online = p.online, presence_reason = p.reason, presence_at = p.at,
    presence_session = CASE WHEN p.online THEN p.session ELSE d.presence_session END
FROM unnest(%s::boolean[], %s::text[], %s::timestamptz[], %s::text[], %s::text[])
    AS p(online, reason, at, session, device_id)
WHERE d.device_id = p.device_id AND (d.presence_at IS NULL OR d.presence_at <= p.at)
"""
# The session each of some devices last came online on: (device_ids). Rows: (device_id, session).
PRESENCE_SESSIONS: Final = "SELECT device_id, presence_session FROM devices WHERE device_id = ANY(%s)"
COPY_EVENTS: Final = "COPY device_events (device_id, ts, received_at, kind, detail) FROM STDIN"
COPY_HEALTH: Final = (
    "COPY device_health (device_id, ts, received_at, uptime_s, rssi_dbm, volume,"
    " queue_depth, played_total, mem_rss_kb, payload) FROM STDIN"
)
UPSERT_DAILY: Final = """
INSERT INTO device_daily AS t (device_id, day, messages, health_reports, fault_events, degraded_events,
    audio_failures, reconnects, min_rssi_dbm, degraded_parts, first_at, last_at)
SELECT d, day, m, h, f, g, a, r, rssi, ARRAY(SELECT jsonb_array_elements_text(parts)), first_at, last_at
FROM unnest(%s::text[], %s::date[], %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int8[],
    %s::int2[], %s::jsonb[], %s::timestamptz[], %s::timestamptz[])
    AS u(d, day, m, h, f, g, a, r, rssi, parts, first_at, last_at)
ON CONFLICT (device_id, day) DO UPDATE SET messages = t.messages + EXCLUDED.messages,
    health_reports = t.health_reports + EXCLUDED.health_reports,
    fault_events = t.fault_events + EXCLUDED.fault_events,
    degraded_events = t.degraded_events + EXCLUDED.degraded_events,
    audio_failures = t.audio_failures + EXCLUDED.audio_failures,
    reconnects = t.reconnects + EXCLUDED.reconnects,
    min_rssi_dbm = LEAST(t.min_rssi_dbm, EXCLUDED.min_rssi_dbm),
    degraded_parts = ARRAY(SELECT DISTINCT unnest(t.degraded_parts || EXCLUDED.degraded_parts) ORDER BY 1),
    first_at = LEAST(t.first_at, EXCLUDED.first_at), last_at = GREATEST(t.last_at, EXCLUDED.last_at)
RETURNING device_id, day, xmax = 0 AS inserted
"""
UPSERT_CELLS: Final = """
INSERT INTO device_cells AS t (device_id, cell, area, first_seen, last_seen, reports, learned)
SELECT c.device_id, c.cell, c.area, c.first_seen, c.last_seen, c.reports,
    c.first_seen <= GREATEST(d.installed_at, d.first_contact) + make_interval(secs => %s)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::int8[])
    AS c(device_id, cell, area, first_seen, last_seen, reports)
JOIN devices d USING (device_id)
ON CONFLICT (device_id, cell) DO UPDATE SET last_seen = GREATEST(t.last_seen, EXCLUDED.last_seen),
    reports = t.reports + EXCLUDED.reports, learned = t.learned OR EXCLUDED.learned
"""

# Each device's clock as its latest health report in the batch says it: (device_id,
# board_offset_ms, source, error_ms, skew_ms, reported_at) columns.
UPSERT_CLOCKS: Final = """
INSERT INTO device_clocks AS t (device_id, board_offset_ms, source, error_ms, skew_ms, reported_at)
SELECT * FROM unnest(%s::text[], %s::int8[], %s::text[], %s::int4[], %s::int8[], %s::timestamptz[])
ON CONFLICT (device_id) DO UPDATE SET board_offset_ms = EXCLUDED.board_offset_ms, source = EXCLUDED.source,
    error_ms = EXCLUDED.error_ms, skew_ms = EXCLUDED.skew_ms, reported_at = EXCLUDED.reported_at
WHERE t.reported_at IS NULL OR t.reported_at <= EXCLUDED.reported_at
"""
