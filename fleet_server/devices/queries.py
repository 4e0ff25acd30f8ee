"""The SQL of the devices slice: what the registry reads, and the registry import's writes.

Every statement that places a device joins `DEVICE_HIERARCHY` (db.hierarchy); the statuses it
names come from their enums.
"""

from __future__ import annotations

from typing import Final

from firmware_protocols.messages import HEARD, AnnounceKind
from fleet_server.db.fetch import statement
from fleet_server.db.hierarchy import (
    DEVICE_HIERARCHY,
    PAYMENT_WITHIN_REACH,
    STORE_OF_DEVICE,
    TASK_WITHIN_REACH,
    merchant_period,
)
from fleet_server.devices.rollup_queries import SLICE_NOW

# The columns of a device as lists show it (DeviceView), over DEVICE_HIERARCHY.
_DEVICE_COLUMNS: Final = (
    "d.device_id, COALESCE(d.serial, d.reported_serial) AS serial, d.model, d.firmware, d.online, d.presence_reason,"
    f" d.last_seen, b.merchant_id, d.state, d.state_since, {STORE_OF_DEVICE} AS store_id,"
    " COALESCE(d.agent_id, st.agent_id) AS agent_id"
)

# Devices matching every filter given (each NULL parameter matches all): state, serial (the
# registry's or the reported one), a search by id or serial or their start, the stores and the
# merchant of a principal's reach. Rows: DeviceView.
LIST_DEVICES: Final = (
    f"SELECT {_DEVICE_COLUMNS} FROM {DEVICE_HIERARCHY}"  # noqa: S608 - constant fragments; values are parameters.
    " WHERE (%(state)s::text IS NULL OR d.state = %(state)s)"
    " AND (%(serial)s::text IS NULL OR d.serial = %(serial)s OR d.reported_serial = %(serial)s)"
    " AND (%(search)s::text IS NULL OR d.device_id = %(search)s OR d.serial = %(search)s"
    "  OR starts_with(d.serial, %(search)s) OR starts_with(d.device_id, %(search)s))"
    " AND (%(stores)s::text[] IS NULL OR st.store_id = ANY(%(stores)s))"
    " AND (%(merchant)s::text IS NULL OR b.merchant_id = %(merchant)s)"
    " ORDER BY d.device_id LIMIT %(limit)s OFFSET %(offset)s"
)

# One device with its registry data. Rows: DeviceDetail without last_health.
DEVICE_DETAIL: Final = (
    f"SELECT {_DEVICE_COLUMNS}, d.first_seen, d.boot_id, d.installed_at, d.install_address,"  # noqa: S608 - constant fragments.
    f" d.last_cell FROM {DEVICE_HIERARCHY} WHERE d.device_id = %s"
)

# The device's latest health report. Rows: HealthView.
LAST_HEALTH: Final = (
    "SELECT ts, received_at, uptime_s, rssi_dbm, volume, queue_depth, played_total, mem_rss_kb"
    " FROM device_health WHERE device_id = %s ORDER BY ts DESC LIMIT 1"
)

# The device's clock as the fleet last saw it (migration 0012). Rows: ClockView.
DEVICE_CLOCK: Final = (
    "SELECT board_offset_ms, source, error_ms, skew_ms, reported_at, refused_skew_s, refused_at"
    " FROM device_clocks WHERE device_id = %s"
)

# Where a device belongs now: (store_id, merchant_id), for reach checks.
DEVICE_PLACE: Final = f"SELECT st.store_id, b.merchant_id FROM {DEVICE_HIERARCHY} WHERE d.device_id = %s"  # noqa: S608 - a constant join.

# Whether a device is known to the fleet at all: one row, or none.
DEVICE_KNOWN: Final = "SELECT 1 FROM devices WHERE device_id = %s"

# States, device events, announcements and tasks of one device in [start, end), newest first.
# Rows: TimelineEntry (at, kind, summary, detail). Events are found by their device time a day
# either side, then kept by arrival, so a device with a wrong clock still shows its events.
TIMELINE: Final = (
    "SELECT at, 'state' AS kind, state || ' (' || cause || ')' AS summary,"  # noqa: S608 - constant fragments; values are parameters.
    "  jsonb_build_object('state', state, 'previous', previous, 'cause', cause) || detail AS detail"
    " FROM device_states WHERE device_id = %(d)s AND at >= %(start)s AND at < %(end)s"
    f" AND {merchant_period('at')}"
    " UNION ALL SELECT received_at, 'event', kind, detail FROM device_events"
    "  WHERE device_id = %(d)s AND ts >= %(start)s - interval '1 day' AND received_at >= %(start)s"
    f"  AND received_at < %(end)s AND {merchant_period('received_at')}"
    " UNION ALL SELECT p.received_at, 'announcement', dl.status || ' ' || p.payment_id,"
    "  jsonb_build_object('payment_id', p.payment_id, 'status', dl.status, 'amount_fen', p.amount_fen,"
    "   'latency_ms', extract(epoch FROM dl.play_started_at - p.received_at) * 1000)"
    "  FROM deliveries dl JOIN payments p USING (payment_id)"
    "  WHERE dl.device_id = %(d)s AND p.received_at >= %(start)s AND p.received_at < %(end)s"
    "  AND p.kind IN ('payment', 'refund')"
    f"  AND {PAYMENT_WITHIN_REACH}"
    " UNION ALL SELECT t.opened_at, 'task', t.kind || ' ' || t.status,"
    "  jsonb_build_object('task_id', t.task_id, 'kind', t.kind, 'status', t.status, 'evidence', t.evidence)"
    "  FROM tasks t WHERE t.device_id = %(d)s AND t.opened_at < %(end)s"
    "  AND COALESCE(t.closed_at, 'infinity') >= %(start)s"
    f"  AND {TASK_WITHIN_REACH}"
    " ORDER BY 1 DESC LIMIT %(limit)s"
)

# The most recent announcements of a device, newest first, with whether the merchant heard
# them. Rows: Announcement.
ANNOUNCEMENTS: Final = statement(
    "SELECT p.payment_id, p.amount_fen, p.channel, p.kind, p.received_at, dl.status,"  # noqa: S608 - constant fragments; values are parameters.
    " dl.status = ANY({heard}) AS heard, dl.text, dl.reason,"
    " extract(epoch FROM dl.play_started_at - p.received_at) * 1000 AS latency_ms"
    " FROM deliveries dl JOIN payments p USING (payment_id) WHERE dl.device_id = %(d)s"
    " AND p.kind = ANY({announced})"
    f" AND {PAYMENT_WITHIN_REACH}"
    " ORDER BY p.received_at DESC LIMIT %(limit)s",
    heard=HEARD,
    announced=(AnnounceKind.PAYMENT, AnnounceKind.REFUND),
)

# Devices known, and online now: one row (devices, online).
# Devices, online, and those whose clock is off: a board more than a minute off (the agent
# corrects it) or reports arriving more than a minute off (it runs on a wrong clock).
COUNTS: Final = (
    "SELECT count(*) AS devices, count(*) FILTER (WHERE online) AS online,"
    " (SELECT count(*) FROM device_clocks WHERE abs(board_offset_ms) > 60000 OR abs(skew_ms) > 60000) AS clocks_off"
    " FROM devices"
)

# -- the registry import ------------------------------------------------------------------

# Which of the given serials belong to which device: (device_id, serial).
SERIAL_OWNERS: Final = "SELECT device_id, serial FROM devices WHERE serial = ANY(%s)"
# The merchants the given devices are bound to: (device_id, merchant_id).
BOUND_MERCHANTS: Final = "SELECT device_id, merchant_id FROM bindings WHERE device_id = ANY(%s)"
# Which merchants hold the given platform ids: (column, id, merchant_id).
PLATFORM_ID_OWNERS: Final = (
    "SELECT 'wechat_sub_mchid', wechat_sub_mchid, merchant_id FROM merchants"
    " WHERE wechat_sub_mchid = ANY(%(wechat_sub_mchid)s)"
    " UNION ALL SELECT 'alipay_seller_id', alipay_seller_id, merchant_id FROM merchants"
    " WHERE alipay_seller_id = ANY(%(alipay_seller_id)s)"
    " UNION ALL SELECT 'unionpay_mer_id', unionpay_mer_id, merchant_id FROM merchants"
    " WHERE unionpay_mer_id = ANY(%(unionpay_mer_id)s)"
)
# Which of the given devices exist: (device_id).
EXISTING_DEVICES: Final = "SELECT device_id FROM devices WHERE device_id = ANY(%s)"

# Each upsert takes one row per entity; columns in table order.
UPSERT_CITY: Final = "INSERT INTO cities VALUES (%s, %s) ON CONFLICT (city_id) DO UPDATE SET name = EXCLUDED.name"
UPSERT_DISTRICT: Final = (
    "INSERT INTO districts VALUES (%s, %s, %s)"
    " ON CONFLICT (district_id) DO UPDATE SET city_id = EXCLUDED.city_id, name = EXCLUDED.name"
)
# A field agent; a phone not given keeps the one held.
UPSERT_AGENT: Final = (
    "INSERT INTO field_agents (agent_id, name, phone_enc, phone_hash) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (agent_id) DO UPDATE SET name = EXCLUDED.name,"
    " phone_enc = COALESCE(EXCLUDED.phone_enc, field_agents.phone_enc),"
    " phone_hash = COALESCE(EXCLUDED.phone_hash, field_agents.phone_hash)"
)
UPSERT_STORE: Final = (
    "INSERT INTO stores VALUES (%s, %s, %s, %s) ON CONFLICT (store_id) DO UPDATE SET"
    " district_id = EXCLUDED.district_id, name = EXCLUDED.name,"
    " agent_id = COALESCE(EXCLUDED.agent_id, stores.agent_id)"
)
# A merchant; sealed contact fields not given keep the ones held.
# A merchant; sealed fields and platform ids not given keep the ones held.
UPSERT_MERCHANT: Final = (
    "INSERT INTO merchants (merchant_id, store_id, name, business_open, business_close,"
    " contact_name_enc, phone_enc, phone_hash, settlement_account_enc, wechat_sub_mchid, alipay_seller_id,"
    " unionpay_mer_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (merchant_id) DO UPDATE SET store_id = EXCLUDED.store_id, name = EXCLUDED.name,"
    " business_open = EXCLUDED.business_open, business_close = EXCLUDED.business_close,"
    " contact_name_enc = COALESCE(EXCLUDED.contact_name_enc, merchants.contact_name_enc),"
    " phone_enc = COALESCE(EXCLUDED.phone_enc, merchants.phone_enc),"
    " phone_hash = COALESCE(EXCLUDED.phone_hash, merchants.phone_hash),"
    " settlement_account_enc = COALESCE(EXCLUDED.settlement_account_enc, merchants.settlement_account_enc),"
    " wechat_sub_mchid = COALESCE(EXCLUDED.wechat_sub_mchid, merchants.wechat_sub_mchid),"
    " alipay_seller_id = COALESCE(EXCLUDED.alipay_seller_id, merchants.alipay_seller_id),"
    " unionpay_mer_id = COALESCE(EXCLUDED.unionpay_mer_id, merchants.unionpay_mer_id)"
)
# A device; installation facts not given keep the ones held; tags replace the held ones only
# when the file gives some (the last parameter repeats the tags for that test).
UPSERT_DEVICE: Final = (
    "INSERT INTO devices (device_id, serial, model, store_id, agent_id, installed_at, install_address,"
    " install_lat, install_lon, tags) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, COALESCE(%s::text[], '{}'))"
    " ON CONFLICT (device_id) DO UPDATE SET serial = EXCLUDED.serial, model = EXCLUDED.model,"
    " store_id = EXCLUDED.store_id, agent_id = EXCLUDED.agent_id,"
    " installed_at = COALESCE(EXCLUDED.installed_at, devices.installed_at),"
    " install_address = COALESCE(EXCLUDED.install_address, devices.install_address),"
    " install_lat = COALESCE(EXCLUDED.install_lat, devices.install_lat),"
    " install_lon = COALESCE(EXCLUDED.install_lon, devices.install_lon),"
    " tags = CASE WHEN %s::text[] IS NULL THEN devices.tags ELSE EXCLUDED.tags END"
)
# A device's first binding; a device bound already keeps its merchant (checked before).
BIND_NEW: Final = "INSERT INTO bindings (device_id, merchant_id) VALUES (%s, %s) ON CONFLICT (device_id) DO NOTHING"

# -- the tracker --------------------------------------------------------------------------

# The given devices' states, clean-report streaks and what the figure rollups hold of them
# (rollups.Rolled), with the slice and business hours they have now, locked in device id order
# (so ingest processes sharing the stream never deadlock). Parameters: ids, fleet_offset.
LOCK_STATES: Final = (
    "SELECT d.device_id, d.state, d.healthy_streak, d.state_since,"  # noqa: S608 - constant fragments.
    " d.deployed_from, d.retired_at, d.run_fault_at, d.rolled_store, d.rolled_model, d.rolled_firmware,"
    " d.rolled_off_s, d.rolled_open_s, d.rolled_close_s,"
    f" {SLICE_NOW}, d.stage FROM {DEVICE_HIERARCHY} WHERE d.device_id = ANY(%(ids)s)"
    " ORDER BY d.device_id FOR UPDATE OF d"
)
# New states, since when, streaks and rollup fields, as unnest() columns (state, since, streak,
# rolled store, model, firmware, off_s, open_s, close_s, deployed_from, retired_at, run_fault_at,
# device_id); a NULL since keeps the state's start.
SET_STATES: Final = (
    "UPDATE devices d SET state = u.state, state_since = COALESCE(u.since, d.state_since),"
    " healthy_streak = u.streak, rolled_store = u.store, rolled_model = u.model, rolled_firmware = u.firmware,"
    " rolled_off_s = u.off_s, rolled_open_s = u.open_s, rolled_close_s = u.close_s,"
    " deployed_from = u.deployed_from, retired_at = u.retired_at, run_fault_at = u.run_fault_at"
    " FROM unnest(%s::text[], %s::timestamptz[], %s::int4[], %s::text[], %s::text[], %s::text[], %s::float8[],"
    " %s::float8[], %s::float8[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::text[])"
    " AS u(state, since, streak, store, model, firmware, off_s, open_s, close_s, deployed_from, retired_at,"
    " run_fault_at, device_id)"
    " WHERE d.device_id = u.device_id"
)
# The transitions, appended to the history the figures are computed from.
COPY_TRANSITIONS: Final = "COPY device_states (device_id, at, state, previous, cause, detail) FROM STDIN"
