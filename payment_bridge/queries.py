"""The SQL of the payment bridge: payments and their deliveries recorded in one statement, the
devices' acks, the retry scan, the figures of delivery, and the outbox of events for
the backend's webhook. The statuses come from the protocol's `AckStatus`, `HEARD`, and the
bridge's own names below. Bindings are the fleet's (`fleet_server.devices.bindings`).
"""

from __future__ import annotations

from typing import Final

from firmware_protocols.messages import HEARD, AckStatus, AnnounceKind
from fleet_server.db.fetch import statement
from fleet_server.db.hierarchy import PAYMENT_WITHIN_REACH

# A delivery's status before its device answers, and after its TTL passed unanswered; the
# device's answers are AckStatus values.
PENDING: Final = "pending"
MISSED: Final = "missed"
# A payment recorded without an announcement (Alipay's WAIT_BUYER_PAY): its kind.
UNANNOUNCED: Final = "none"
# The event a payment nobody heard gets, and why when no device is bound to its merchant.
NOT_ANNOUNCED: Final = "not_announced"
NO_BOUND_DEVICE: Final = "no_bound_device"
# ... and when no merchant of ours could be found for it (recorded, the platform told success).
UNKNOWN_MERCHANT: Final = "unknown_merchant"
# ... and when it was paid too long before it reached us to be announced now.
STALE: Final = "stale"

_NAMES: Final[dict[str, str | frozenset[str]]] = {
    "pending": PENDING,
    "missed": MISSED,
    "open": frozenset({PENDING, MISSED}),
    "played": AckStatus.PLAYED,
    "refused": AckStatus.REFUSED,
    "failed": AckStatus.FAILED,
    "heard": HEARD,
    "unannounced": UNANNOUNCED,
    "not_announced": NOT_ANNOUNCED,
    "no_bound_device": NO_BOUND_DEVICE,
    "unknown_merchant": UNKNOWN_MERCHANT,
    "alert": AnnounceKind.ALERT,
}

# A refused notification, kept for the record.
RECORD_REJECTED: Final = (
    "INSERT INTO rejected_notifications (received_at, source, code, reason, body, headers)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
# One more attempt, published at a time, for each (payment_id, device_id): (at, payment ids, device ids).
MARK_PUBLISHED: Final = (
    "UPDATE deliveries d SET attempts = d.attempts + 1, last_published_at = %s"
    " FROM unnest(%s::text[], %s::text[]) AS r (payment_id, device_id)"
    " WHERE d.payment_id = r.payment_id AND d.device_id = r.device_id"
)
# Pending deliveries still within their TTL and unacked since before a moment, oldest first.
# Rows: PendingDelivery. Parameters: now, the moment, the limit.
DUE_FOR_RETRY: Final = statement(
    "SELECT d.payment_id, d.device_id, p.merchant_id, p.amount_fen, p.channel, p.kind, p.paid_at,"
    " p.received_at, d.expires_at, CASE WHEN p.kind = {alert} THEN p.status END AS alert"
    " FROM deliveries d JOIN payments p USING (payment_id)"
    " WHERE d.status = {pending} AND d.expires_at > %s AND d.last_published_at < %s"
    " ORDER BY d.last_published_at LIMIT %s",
    **_NAMES,
)
# Pending deliveries past their TTL (and the grace for a last ack) become missed: (payment_id).
MARK_MISSED: Final = statement(
    "UPDATE deliveries SET status = {missed} WHERE status = {pending} AND expires_at < %s RETURNING payment_id",
    **_NAMES,
)
# Payments (or refunds: %(kind)s) received since a moment (NULL: all), and those announced to
# nobody: one row (payments, unrouted_payments).
PAYMENT_COUNTS: Final = statement(
    "SELECT count(*) AS payments,"  # noqa: S608 - constant fragments; values are parameters.
    " count(*) FILTER (WHERE p.kind <> {unannounced} AND NOT EXISTS"
    "   (SELECT 1 FROM deliveries d WHERE d.payment_id = p.payment_id)) AS unrouted_payments"
    " FROM payments p WHERE (%(since)s::timestamptz IS NULL OR p.received_at >= %(since)s)"
    " AND p.kind = %(kind)s"
    f" AND {PAYMENT_WITHIN_REACH}",
    **_NAMES,
)
# Both counts take a reach (PAYMENT_WITHIN_REACH): a payment is its merchant's as recorded.
# Deliveries of payments received since a moment (NULL: all) by outcome, with latency and ack
# round-trip percentiles of the played ones: one row.
DELIVERY_COUNTS: Final = statement(
    "SELECT count(*) AS deliveries,"  # noqa: S608 - constant fragments; values are parameters.
    " count(*) FILTER (WHERE d.status = ANY({heard})) AS delivered,"
    " count(*) FILTER (WHERE d.status = {pending}) AS pending,"
    " count(*) FILTER (WHERE d.status = {missed}) AS missed,"
    " count(*) FILTER (WHERE d.status = {refused}) AS refused,"
    " count(*) FILTER (WHERE d.status = {failed}) AS failed,"
    " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lat) AS lat_p,"
    " max(lat) AS lat_max,"
    " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY rtt) AS rtt_p,"
    " max(rtt) AS rtt_max"
    " FROM (SELECT d.status,"
    "   CASE WHEN d.status = {played} THEN"
    "     extract(epoch FROM d.play_started_at - p.received_at) * 1000 END AS lat,"
    "   CASE WHEN d.status = {played} THEN"
    "     extract(epoch FROM d.acked_at - p.received_at) * 1000 END AS rtt"
    "   FROM deliveries d JOIN payments p USING (payment_id)"
    "   WHERE (%(since)s::timestamptz IS NULL OR p.received_at >= %(since)s)"
    "   AND p.kind = %(kind)s"
    f"   AND {PAYMENT_WITHIN_REACH}) d",
    **_NAMES,
)
# One payment within reach (PAYMENT_WITHIN_REACH). Rows: PaymentView without deliveries.
PAYMENT: Final = (
    "SELECT payment_id, merchant_id, platform_merchant_id, amount_fen, channel, kind, status, paid_at, received_at,"  # noqa: S608 - constant fragments.
    " refund_of, refunded_fen"
    f" FROM payments p WHERE payment_id = %(id)s AND {PAYMENT_WITHIN_REACH}"
)
# A payment's deliveries by device. Rows: DeliveryView.
DELIVERIES: Final = (
    "SELECT device_id, status, attempts, acked_at, play_started_at, text, reason"
    " FROM deliveries WHERE payment_id = %s ORDER BY device_id"
)
# Payments nobody heard, newest first, by merchant and since (NULL matches all). Rows: NotAnnounced.
NOT_ANNOUNCED_PAYMENTS: Final = statement(
    "SELECT p.payment_id, p.merchant_id, p.platform_merchant_id, p.amount_fen, p.channel, p.paid_at,"  # noqa: S608 - constant fragments.
    " p.received_at, e.reason,"
    " e.created_at AS concluded_at, e.delivered_at AS backend_told_at"
    " FROM payment_events e JOIN payments p USING (payment_id)"
    " WHERE e.event = {not_announced} AND (%(m)s::text IS NULL OR p.merchant_id = %(m)s)"
    f" AND {PAYMENT_WITHIN_REACH}"
    " AND (%(since)s::timestamptz IS NULL OR p.received_at >= %(since)s)"
    " ORDER BY p.received_at DESC LIMIT %(limit)s",
    **_NAMES,
)
# A `not_announced` event for each of the payments no device played or may still play, in the
# caller's transaction: (ids, reason).
FLAG_NOT_ANNOUNCED: Final = statement(
    "INSERT INTO payment_events (payment_id, event, reason)"
    " SELECT p.payment_id, {not_announced}, %(reason)s FROM payments p"
    " WHERE p.payment_id = ANY(%(ids)s) AND p.kind <> {unannounced} AND p.kind <> {alert} AND NOT EXISTS ("
    "   SELECT 1 FROM deliveries d WHERE d.payment_id = p.payment_id"
    "   AND (d.status = {pending} OR d.status = ANY({heard})))"
    " ON CONFLICT (payment_id, event) DO NOTHING",
    **_NAMES,
)

# -- the webhook's outbox -----------------------------------------------------------------

# Claim up to a batch of due events for a lease (another bridge skips them meanwhile), with
# their payments: (lease seconds, batch). Rows: the event and its payment.
CLAIM_EVENTS: Final = (
    "UPDATE payment_events e SET next_attempt_at = now() + make_interval(secs => %s)"
    " FROM payments p WHERE p.payment_id = e.payment_id AND e.id IN ("
    "   SELECT id FROM payment_events WHERE delivered_at IS NULL AND next_attempt_at <= now()"
    "   ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING e.id, e.event, e.reason, e.attempts, p.payment_id, p.merchant_id, p.platform_merchant_id,"
    " p.amount_fen, p.channel, p.paid_at"
)
EVENT_DELIVERED: Final = "UPDATE payment_events SET delivered_at = now() WHERE id = %s"

# New payments (or ones taken again, see record_payments), their deliveries to the devices bound
# to their merchants if they announce, and the not-announced event for any that announces to
# nobody, in one statement. The first publish follows at once: attempts starts at 1 and
# last_published_at at the time of receipt, so the retry loop leaves the delivery alone until the
# ack timeout has passed. Answers one row per payment taken: (payment_id, its device ids).
# The payments come as one JSON array of objects (`rows`): one text parameter, where fifteen
# arrays cost the bridge ~9 % of its CPU in psycopg's adaptation (py-spy, issue 27).
_RECORD_PAYMENTS: Final = """
WITH n AS (
    SELECT * FROM json_to_recordset(%(rows)s::json)
        AS n (payment_id text, source text, notify_id text, given text, platform_merchant_id text,
              amount_fen bigint, channel text, kind text, status text, paid_at timestamptz,
              received_at timestamptz, raw text, expires_at timestamptz, refund_of text, held text)
),
r AS (SELECT n.*, {route} AS merchant_id FROM n),
p AS (
    INSERT INTO payments (payment_id, source, notify_id, merchant_id, platform_merchant_id, amount_fen, channel,
                          kind, status, paid_at, received_at, raw, refund_of)
    SELECT payment_id, source, notify_id, merchant_id, platform_merchant_id, amount_fen, channel, kind, status,
           paid_at, received_at, raw::jsonb, refund_of
    FROM r
    ON CONFLICT (payment_id) DO UPDATE SET notify_id = EXCLUDED.notify_id, kind = EXCLUDED.kind,
        status = EXCLUDED.status, amount_fen = EXCLUDED.amount_fen, paid_at = EXCLUDED.paid_at,
        received_at = EXCLUDED.received_at, raw = EXCLUDED.raw
    WHERE payments.kind = {unannounced} AND EXCLUDED.kind <> {unannounced}
    RETURNING payment_id, kind, merchant_id
),
d AS (
    INSERT INTO deliveries (payment_id, device_id, expires_at, last_published_at, attempts)
    SELECT p.payment_id, b.device_id, r.expires_at, r.received_at, 1
    FROM p JOIN r USING (payment_id) JOIN bindings b ON b.merchant_id = p.merchant_id
    WHERE p.kind <> {unannounced}
    ORDER BY p.payment_id, b.device_id
    RETURNING payment_id, device_id
),
e AS (
    INSERT INTO payment_events (payment_id, event, reason)
    SELECT p.payment_id, {not_announced},
           COALESCE(r.held, CASE WHEN p.merchant_id IS NULL THEN {unknown_merchant} ELSE {no_bound_device} END)
    FROM p JOIN r USING (payment_id)
    WHERE (p.kind <> {unannounced} OR r.held IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM d WHERE d.payment_id = p.payment_id)
    ON CONFLICT (payment_id, event) DO NOTHING
)
SELECT p.payment_id, (SELECT array_agg(d.device_id ORDER BY d.device_id) FROM d WHERE d.payment_id = p.payment_id),
       p.merchant_id
FROM p
"""
# The merchant: ours as our backend named it (in its own notification, or in a platform's free
# field when that names a merchant we know: registered, or with a device bound); else the
# merchant whose id on the platform it is; else none (recorded, not announced: unknown_merchant).
_ROUTE: Final = """COALESCE(
    CASE WHEN n.given IS NOT NULL AND (n.source = 'backend'
              OR EXISTS (SELECT 1 FROM merchants m WHERE m.merchant_id = n.given)
              OR EXISTS (SELECT 1 FROM bindings b WHERE b.merchant_id = n.given)) THEN n.given END,
    (SELECT m.merchant_id FROM merchants m WHERE n.channel = 'wechat' AND m.wechat_sub_mchid = n.platform_merchant_id),
    (SELECT m.merchant_id FROM merchants m WHERE n.channel = 'alipay' AND m.alipay_seller_id = n.platform_merchant_id),
    (SELECT m.merchant_id FROM merchants m WHERE n.channel = 'unionpay' AND m.unionpay_mer_id = n.platform_merchant_id)
)"""
# Payments and their deliveries, recorded in one statement: (payment_id, device ids, merchant).
# The backend's own notifications name our merchant: recorded as named, the statement kept as
# small as the hot path needs (its planning is most of its cost, BENCHMARKS.md); the platforms'
# are routed (_ROUTE).
RECORD_PAYMENTS: Final = statement(_RECORD_PAYMENTS.replace("{route}", "n.given"), **_NAMES)
RECORD_ROUTED_PAYMENTS: Final = statement(_RECORD_PAYMENTS.replace("{route}", _ROUTE), **_NAMES)

# The payment a refund refunds, locked while the refund is recorded (refunds of one payment are
# recorded one at a time): one row (merchant_id, amount_fen, refunded_fen), or none.
LOCK_REFUNDED: Final = "SELECT merchant_id, amount_fen, refunded_fen FROM payments WHERE payment_id = %s FOR UPDATE"
# A refund recorded against its payment: (amount refunded, payment id).
ADD_REFUNDED: Final = (
    "UPDATE payments SET refunded_fen = refunded_fen + %(fen)s,"
    " status = CASE WHEN refunded_fen + %(fen)s >= amount_fen THEN 'REFUNDED' ELSE 'REFUNDED_PART' END"
    " WHERE payment_id = %(id)s"
)
# The refunds of a payment, oldest first. Rows: RefundView.
REFUNDS_OF: Final = (
    "SELECT payment_id, amount_fen, kind, status, paid_at AS refunded_at, received_at FROM payments"
    " WHERE refund_of = %s ORDER BY received_at"
)

# Devices' acks (one JSON array of objects, `rows`) onto their deliveries; answers
# (payment_id, device_id) of each delivery found.
# When the play started, on the server's clock: the device's (corrected) time of it where that
# lies within what the server knows, between the payment's arrival and the latest it can have
# been: the ack's arrival less the device's own interval from play start to sending the ack
# (measured on one clock, so the board's offset does not enter; for an ack sent at once it is the
# true start plus the ack's transit). Outside that window the device's clock is known to be off
# (a modem's whole seconds, a clock it could not correct), and the latest bound is taken. No
# latency is negative, and none is longer than the device's own account allows.
# An ack takes the delivery when it is still open, or when it says played and nothing did before.
RECORD_ACKS: Final = statement(
    """
UPDATE deliveries d SET acks = d.acks + 1,
    status = CASE WHEN d.status = ANY({open}) OR (a.status = {played} AND d.status <> {played})
             THEN a.status ELSE d.status END,
    acked_at = CASE WHEN d.status = ANY({open}) OR (a.status = {played} AND d.status <> {played})
               THEN a.acked_at ELSE d.acked_at END,
    ack_signed = CASE WHEN d.status = ANY({open}) OR (a.status = {played} AND d.status <> {played})
               THEN a.signed ELSE d.ack_signed END,
    play_started_at = COALESCE(d.play_started_at, CASE
        WHEN a.play_started IS NULL THEN NULL
        WHEN a.play_started BETWEEN p.received_at AND a.acked_at - GREATEST(a.sent - a.play_started, interval '0')
            THEN a.play_started
        ELSE GREATEST(p.received_at, a.acked_at - GREATEST(a.sent - a.play_started, interval '0')) END),
    text = COALESCE(d.text, a.text), reason = COALESCE(d.reason, a.reason)
FROM json_to_recordset(%(rows)s::json)
    AS a (payment_id text, device_id text, status text, acked_at timestamptz, play_started timestamptz,
          text text, reason text, signed boolean, sent timestamptz), payments p
WHERE d.payment_id = a.payment_id AND d.device_id = a.device_id AND p.payment_id = d.payment_id
RETURNING d.payment_id, d.device_id
""",
    **_NAMES,
)
# A failed attempt, and when to try again: (error, next attempt at, id).
EVENT_RETRY: Final = (
    "UPDATE payment_events SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s WHERE id = %s"
)
