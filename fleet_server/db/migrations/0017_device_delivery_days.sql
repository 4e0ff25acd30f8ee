-- Deliveries by device and local day (issue 25): a device's card (its 30 days of announcements
-- settled and played, and their latencies) from 30 rows instead of its raw deliveries, each
-- joined to its payment (at the v2 rate 1,200 of them, scattered over 120 million: tens of
-- milliseconds to read cold). Kept with the slice rows by the same trigger function, which
-- this replaces (migration 0015's `roll_deliveries`, the same but for the device rows), and
-- rebuilt with them (fleet_server.devices.delivery_rollups). Rows are not moved when a device is
-- rebound: they are the device's own.

CREATE TABLE delivery_device_days (
    device_id      text NOT NULL,
    day            date NOT NULL,
    announcements  integer NOT NULL DEFAULT 0,
    played         integer NOT NULL DEFAULT 0,
    lat_00 integer NOT NULL DEFAULT 0, lat_01 integer NOT NULL DEFAULT 0, lat_02 integer NOT NULL DEFAULT 0, lat_03 integer NOT NULL DEFAULT 0, lat_04 integer NOT NULL DEFAULT 0, lat_05 integer NOT NULL DEFAULT 0,
    lat_06 integer NOT NULL DEFAULT 0, lat_07 integer NOT NULL DEFAULT 0, lat_08 integer NOT NULL DEFAULT 0, lat_09 integer NOT NULL DEFAULT 0, lat_10 integer NOT NULL DEFAULT 0, lat_11 integer NOT NULL DEFAULT 0,
    lat_12 integer NOT NULL DEFAULT 0, lat_13 integer NOT NULL DEFAULT 0, lat_14 integer NOT NULL DEFAULT 0, lat_15 integer NOT NULL DEFAULT 0, lat_16 integer NOT NULL DEFAULT 0, lat_17 integer NOT NULL DEFAULT 0,
    lat_18 integer NOT NULL DEFAULT 0, lat_19 integer NOT NULL DEFAULT 0, lat_20 integer NOT NULL DEFAULT 0, lat_21 integer NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, day)
);

-- Groups of deliveries (device, local day, latency bucket or NULL, how many, how many played;
-- negative counts take them out) added to the device rows, in key order: no deadlocks.
CREATE FUNCTION add_device_deliveries(devices text[], days date[], announced integer[], played integer[], lbs integer[])
RETURNS void LANGUAGE sql AS $$
INSERT INTO delivery_device_days AS t (device_id, day, announcements, played, lat_00, lat_01, lat_02, lat_03, lat_04, lat_05, lat_06, lat_07, lat_08, lat_09, lat_10, lat_11, lat_12, lat_13, lat_14, lat_15, lat_16, lat_17, lat_18, lat_19, lat_20, lat_21)
SELECT device_id, day, sum(announced), sum(played),
       COALESCE(sum(announced) FILTER (WHERE lb = 0), 0), COALESCE(sum(announced) FILTER (WHERE lb = 1), 0), COALESCE(sum(announced) FILTER (WHERE lb = 2), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 3), 0), COALESCE(sum(announced) FILTER (WHERE lb = 4), 0), COALESCE(sum(announced) FILTER (WHERE lb = 5), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 6), 0), COALESCE(sum(announced) FILTER (WHERE lb = 7), 0), COALESCE(sum(announced) FILTER (WHERE lb = 8), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 9), 0), COALESCE(sum(announced) FILTER (WHERE lb = 10), 0), COALESCE(sum(announced) FILTER (WHERE lb = 11), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 12), 0), COALESCE(sum(announced) FILTER (WHERE lb = 13), 0), COALESCE(sum(announced) FILTER (WHERE lb = 14), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 15), 0), COALESCE(sum(announced) FILTER (WHERE lb = 16), 0), COALESCE(sum(announced) FILTER (WHERE lb = 17), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 18), 0), COALESCE(sum(announced) FILTER (WHERE lb = 19), 0), COALESCE(sum(announced) FILTER (WHERE lb = 20), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 21), 0)
FROM unnest(devices, days, announced, played, lbs) AS g(device_id, day, announced, played, lb)
GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (device_id, day) DO UPDATE SET
    announcements = t.announcements + EXCLUDED.announcements, played = t.played + EXCLUDED.played,
    lat_00 = t.lat_00 + EXCLUDED.lat_00, lat_01 = t.lat_01 + EXCLUDED.lat_01, lat_02 = t.lat_02 + EXCLUDED.lat_02, lat_03 = t.lat_03 + EXCLUDED.lat_03,
    lat_04 = t.lat_04 + EXCLUDED.lat_04, lat_05 = t.lat_05 + EXCLUDED.lat_05, lat_06 = t.lat_06 + EXCLUDED.lat_06, lat_07 = t.lat_07 + EXCLUDED.lat_07,
    lat_08 = t.lat_08 + EXCLUDED.lat_08, lat_09 = t.lat_09 + EXCLUDED.lat_09, lat_10 = t.lat_10 + EXCLUDED.lat_10, lat_11 = t.lat_11 + EXCLUDED.lat_11,
    lat_12 = t.lat_12 + EXCLUDED.lat_12, lat_13 = t.lat_13 + EXCLUDED.lat_13, lat_14 = t.lat_14 + EXCLUDED.lat_14, lat_15 = t.lat_15 + EXCLUDED.lat_15,
    lat_16 = t.lat_16 + EXCLUDED.lat_16, lat_17 = t.lat_17 + EXCLUDED.lat_17, lat_18 = t.lat_18 + EXCLUDED.lat_18, lat_19 = t.lat_19 + EXCLUDED.lat_19,
    lat_20 = t.lat_20 + EXCLUDED.lat_20, lat_21 = t.lat_21 + EXCLUDED.lat_21
$$;

-- Migration 0015's function, the changed deliveries read once and added both by slice and by
-- device.
CREATE OR REPLACE FUNCTION roll_deliveries(ids text[], devs text[], statuses text[], started timestamptz[], signs integer[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    off integer;
    hours_from timestamptz;
    done integer;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1212416038);
    SELECT c.deliveries_offset_min, c.hours_from INTO off, hours_from FROM figure_clock c;
    IF off IS NULL THEN
        RETURN;
    END IF;
    UPDATE devices d SET announced_store = COALESCE(st.store_id, ''), announced_model = COALESCE(d.model, ''),
        announced_firmware = COALESCE(d.firmware, '')
    FROM devices x LEFT JOIN bindings b ON b.device_id = x.device_id
        LEFT JOIN merchants m ON m.merchant_id = b.merchant_id
        LEFT JOIN stores st ON st.store_id = COALESCE(m.store_id, x.store_id)
    WHERE x.device_id = d.device_id AND d.device_id IN (
        SELECT y.device_id FROM devices y WHERE y.device_id IN (SELECT unnest(devs)) AND y.announced_store IS NULL
        ORDER BY y.device_id FOR UPDATE);
    WITH c AS MATERIALIZED (
        SELECT local_day(p.received_at, off) AS day,
               CASE WHEN p.received_at >= hours_from THEN utc_hour(p.received_at) END AS hour,
               d.device_id, d.announced_store AS store, d.announced_model AS model, d.announced_firmware AS firmware,
               latency_bucket(c.started, p.received_at) AS lb, c.sign, delivery_heard(c.status) AS heard
        FROM unnest(ids, devs, statuses, started, signs) AS c(payment_id, device_id, status, started, sign)
        JOIN payments p USING (payment_id) JOIN devices d ON d.device_id = c.device_id
        WHERE delivery_counted(p.kind, c.status)
    ),
    by_slice AS (
        SELECT add_deliveries(array_agg(day), array_agg(hour), array_agg(store), array_agg(model), array_agg(firmware),
                              array_agg(n), array_agg(p), array_agg(lb))
        FROM (SELECT day, hour, store, model, firmware, lb, sum(sign)::int AS n,
                     COALESCE(sum(sign) FILTER (WHERE heard), 0)::int AS p
              FROM c GROUP BY 1, 2, 3, 4, 5, 6) g
    ),
    by_device AS (
        SELECT add_device_deliveries(array_agg(device_id), array_agg(day), array_agg(n), array_agg(p), array_agg(lb))
        FROM (SELECT device_id, day, lb, sum(sign)::int AS n, COALESCE(sum(sign) FILTER (WHERE heard), 0)::int AS p
              FROM c GROUP BY 1, 2, 3) g
    )
    SELECT 1 INTO done FROM by_slice, by_device;
END
$$;

-- A database whose delivery rollups are built already gets its device rows from the raw
-- deliveries kept (those older than their retention are gone from the raw computation too),
-- under the delivery rollup lock, exclusive: a bridge transaction still running the old
-- function finishes first, and the next ones run this one.
SELECT pg_advisory_xact_lock(1212416038);
SELECT add_device_deliveries(array_agg(device_id), array_agg(day), array_agg(n), array_agg(p), array_agg(lb))
FROM (
    SELECT dl.device_id, local_day(p.received_at, c.deliveries_offset_min) AS day,
           latency_bucket(dl.play_started_at, p.received_at) AS lb, count(*)::int AS n,
           count(*) FILTER (WHERE delivery_heard(dl.status))::int AS p
    FROM figure_clock c CROSS JOIN payments p JOIN deliveries dl USING (payment_id)
    WHERE c.deliveries_offset_min IS NOT NULL AND delivery_counted(p.kind, dl.status)
    GROUP BY 1, 2, 3
) g;
