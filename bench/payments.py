"""The query bench's payments and deliveries (`haodian bench query`).

At the v2 rate: on average 40 payments a day per merchant (one merchant per device), spread over
a small shop's day (`DAILY_CURVE`: breakfast, lunch and dinner peaks, quiet nights), each
announced to the merchant's device: played, or missed 3 times in 10,000; received → play start
25 ms plus an exponential of mean 40 ms. One payment in 2,000 names no merchant of ours and is
announced to nobody.

Raw rows are generated for the last `raw_days` local days, today's so far the last. A 30-day raw
history of 100,000 merchants is 120 million payments and as many deliveries, about 50 GB with
their indexes (more than this machine's free disk, and hours to load), so the delivery rollup
rows of the older days are copies of the first whole raw day's: as many rows, of the same shape,
as a 30-day history gives the queries to read. The rollups of the raw days are built from them by
the rebuild, as for an existing installation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from psycopg_pool import AsyncConnectionPool

from fleet_server.figures import latency

# Relative payments per local hour 0..23.
DAILY_CURVE: Final = (
    *(0.3, 0.2, 0.1, 0.1, 0.1, 0.3, 1.5, 4.0, 5.0, 3.5, 3.0, 5.0),
    *(7.0, 5.0, 3.0, 2.5, 3.0, 5.0, 7.0, 6.5, 5.0, 3.5, 2.0, 1.0),
)

# One hour's payments: %(n)s spread over [%(from)s, %(from)s + 1 h) up to now, to random merchants.
_PAYMENTS: Final = """
INSERT INTO payments (payment_id, source, notify_id, merchant_id, amount_fen, channel, kind, status, paid_at,
                      received_at, raw)
SELECT id, 'bench', id, m, amount, ch, 'payment', 'SUCCESS', at - interval '2 seconds', at, '{}'
FROM (
    SELECT 'B' || %(tag)s || '-' || i AS id,
           CASE WHEN random() < 0.0005 THEN NULL
                ELSE 'M' || lpad((1 + floor(random() * %(devices)s))::int::text, 6, '0') END AS m,
           (100 + floor(random() * 5000))::bigint AS amount,
           (ARRAY['wechat', 'alipay', 'unionpay'])[1 + floor(random() * 3)::int] AS ch,
           %(from)s::timestamptz + random() * interval '1 hour' AS at
    FROM generate_series(1, %(n)s) i
) x
WHERE at < now()
"""
# The deliveries of the payments received in [%(from)s, %(to)s), settled as the bridge settles them.
_DELIVERIES: Final = """
INSERT INTO deliveries (payment_id, device_id, status, attempts, expires_at, last_published_at, acked_at,
                        play_started_at, acks)
SELECT p.payment_id, b.device_id, CASE WHEN r.missed THEN 'missed' ELSE 'played' END, 1,
       p.received_at + interval '5 minutes', p.received_at,
       CASE WHEN NOT r.missed THEN p.received_at + r.lat * 1.5 END,
       CASE WHEN NOT r.missed THEN p.received_at + r.lat END, CASE WHEN r.missed THEN 0 ELSE 1 END
FROM payments p JOIN bindings b USING (merchant_id),
LATERAL (SELECT random() < 0.0003 AS missed, (25 + -ln(1 - random()) * 40) * interval '1 millisecond' AS lat
         WHERE p.payment_id IS NOT NULL) r
WHERE p.received_at >= %(from)s AND p.received_at < %(to)s
"""


async def generate(
    pool: AsyncConnectionPool, *, devices: int, per_day: float, raw_days: int, today: datetime
) -> tuple[int, int]:
    """Payments and deliveries of the last `raw_days` local days up to now (`today`: local
    midnight); returns how many of each."""
    total = sum(DAILY_CURVE)
    async with pool.connection() as conn:
        for day in range(raw_days - 1, -1, -1):
            midnight = today - timedelta(days=day)
            for hour, weight in enumerate(DAILY_CURVE):
                at = midnight + timedelta(hours=hour)
                if at >= datetime.now(tz=UTC):
                    break
                n = round(devices * per_day * weight / total)
                await conn.execute(_PAYMENTS, {"tag": f"{day}-{hour}", "devices": devices, "from": at, "n": n})
            print(f"payments of {midnight:%Y-%m-%d} generated", flush=True)
        start = today - timedelta(days=raw_days - 1)
        await conn.execute(_DELIVERIES, {"from": start, "to": today + timedelta(days=1)})
        cur = await conn.execute("SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM deliveries)")
        row = await cur.fetchone()
    assert row is not None  # noqa: S101 - an aggregate always answers
    return int(row[0]), int(row[1])


def _copy(table: str, bucket: str, shifted: str, where: str, columns: str) -> str:
    return (
        f"INSERT INTO {table} ({bucket}, {columns}) SELECT {shifted}, {columns}"  # noqa: S608 - our own names
        f" FROM {table} t, generate_series(1, %(older)s) k WHERE {where}"
    )


_DELIVERY_COLUMNS: Final = "store_id, model, firmware, announcements, played, " + ", ".join(latency.COLUMNS)
COPY_DAYS: Final = (
    _copy("delivery_days", "day", "t.day - k", "t.day = %(model)s::date", _DELIVERY_COLUMNS),
    _copy("unrouted_days", "day", "t.day - k", "t.day = %(model)s::date", "merchant_id, payments"),
    _copy(
        "delivery_device_days",
        "day",
        "t.day - k",
        "t.day = %(model)s::date",
        "device_id, announcements, played, " + ", ".join(latency.COLUMNS),
    ),
    _copy(
        "delivery_hours",
        "hour",
        "t.hour - k * interval '1 day'",
        "t.hour >= %(from)s AND t.hour < %(from)s + interval '1 day'"
        " AND t.hour - k * interval '1 day' >= (SELECT hours_from FROM figure_clock)",
        _DELIVERY_COLUMNS,
    ),
    _copy(
        "unrouted_hours",
        "hour",
        "t.hour - k * interval '1 day'",
        "t.hour >= %(from)s AND t.hour < %(from)s + interval '1 day'"
        " AND t.hour - k * interval '1 day' >= (SELECT hours_from FROM figure_clock)",
        "merchant_id, payments",
    ),
)


async def copy_older_days(pool: AsyncConnectionPool, *, first_whole_day: datetime, older: int) -> None:
    """The delivery rollup rows of the `older` days before `first_whole_day` (local midnight,
    UTC), copied from that day's (with the fleet's UTC+8 local date)."""
    model = (first_whole_day + timedelta(hours=8)).date()
    async with pool.connection() as conn:
        for statement in COPY_DAYS:
            await conn.execute(statement, {"older": older, "model": model, "from": first_whole_day})
