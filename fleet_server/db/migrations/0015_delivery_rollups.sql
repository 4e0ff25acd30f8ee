-- Delivery figures from rollups (issue 25, fleet_server/figures/delivery_rollups.py): the
-- announcements settled and played, and their latencies in a fixed histogram, by slice (the
-- device's store, model and firmware, as figure_days) and local day or UTC hour; the payments
-- announced to nobody by merchant. Kept by the triggers below in the transactions that write
-- the deliveries and payments (the bridge's acks, the TTL sweep, the recording of payments), so
-- no figure reads the deliveries of the whole fleet. Rows are kept when deliveries are deleted:
-- the figures outlive the raw records' retention.
--
-- The rollups count from the moment they are built (figure_clock.deliveries_offset_min set, by
-- the first rebuild: `haodian fleet recompute` or the inspector's first checkpoint); before
-- that the triggers do nothing and the figures are computed from raw history.

-- The latency histogram's buckets (ms, the upper bound of each but the last; bucket 0 is below
-- the first bound, the last at or above the last bound). Pinned to
-- fleet_server.figures.latency.EDGES by a test; a new migration replaces it if they change.
CREATE FUNCTION latency_bucket(started timestamptz, received timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT width_bucket(date_part('epoch', started - received) * 1000,
                        '{5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000, 300000}'::float8[])
$$;

-- A delivery as the figures count it: settled (not pending) for a payment or a refund; played
-- when its device heard it (firmware_protocols.messages.HEARD).
CREATE FUNCTION delivery_counted(kind text, status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT kind IN ('payment', 'refund') AND status <> 'pending' $$;
CREATE FUNCTION delivery_heard(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT status IN ('played', 'duplicate', 'silenced') $$;

-- The fleet's local day of an instant, and its UTC hour.
CREATE FUNCTION local_day(at timestamptz, offset_min integer) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT ((at AT TIME ZONE 'UTC') + make_interval(mins => offset_min))::date $$;
CREATE FUNCTION utc_hour(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT date_trunc('hour', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' $$;

CREATE TABLE delivery_days (
    day            date NOT NULL,
    store_id       text NOT NULL,
    model          text NOT NULL,
    firmware       text NOT NULL,
    announcements  integer NOT NULL DEFAULT 0,
    played         integer NOT NULL DEFAULT 0,
    lat_00 integer NOT NULL DEFAULT 0, lat_01 integer NOT NULL DEFAULT 0, lat_02 integer NOT NULL DEFAULT 0, lat_03 integer NOT NULL DEFAULT 0, lat_04 integer NOT NULL DEFAULT 0, lat_05 integer NOT NULL DEFAULT 0,
    lat_06 integer NOT NULL DEFAULT 0, lat_07 integer NOT NULL DEFAULT 0, lat_08 integer NOT NULL DEFAULT 0, lat_09 integer NOT NULL DEFAULT 0, lat_10 integer NOT NULL DEFAULT 0, lat_11 integer NOT NULL DEFAULT 0,
    lat_12 integer NOT NULL DEFAULT 0, lat_13 integer NOT NULL DEFAULT 0, lat_14 integer NOT NULL DEFAULT 0, lat_15 integer NOT NULL DEFAULT 0, lat_16 integer NOT NULL DEFAULT 0, lat_17 integer NOT NULL DEFAULT 0,
    lat_18 integer NOT NULL DEFAULT 0, lat_19 integer NOT NULL DEFAULT 0, lat_20 integer NOT NULL DEFAULT 0, lat_21 integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, store_id, model, firmware)
);
CREATE TABLE delivery_hours (
    hour           timestamptz NOT NULL,
    store_id       text NOT NULL,
    model          text NOT NULL,
    firmware       text NOT NULL,
    announcements  integer NOT NULL DEFAULT 0,
    played         integer NOT NULL DEFAULT 0,
    lat_00 integer NOT NULL DEFAULT 0, lat_01 integer NOT NULL DEFAULT 0, lat_02 integer NOT NULL DEFAULT 0, lat_03 integer NOT NULL DEFAULT 0, lat_04 integer NOT NULL DEFAULT 0, lat_05 integer NOT NULL DEFAULT 0,
    lat_06 integer NOT NULL DEFAULT 0, lat_07 integer NOT NULL DEFAULT 0, lat_08 integer NOT NULL DEFAULT 0, lat_09 integer NOT NULL DEFAULT 0, lat_10 integer NOT NULL DEFAULT 0, lat_11 integer NOT NULL DEFAULT 0,
    lat_12 integer NOT NULL DEFAULT 0, lat_13 integer NOT NULL DEFAULT 0, lat_14 integer NOT NULL DEFAULT 0, lat_15 integer NOT NULL DEFAULT 0, lat_16 integer NOT NULL DEFAULT 0, lat_17 integer NOT NULL DEFAULT 0,
    lat_18 integer NOT NULL DEFAULT 0, lat_19 integer NOT NULL DEFAULT 0, lat_20 integer NOT NULL DEFAULT 0, lat_21 integer NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, store_id, model, firmware)
);
-- Payments and refunds with no delivery at all (no device bound, no merchant found), by the
-- merchant they were recorded for ('' for none).
CREATE TABLE unrouted_days (
    day          date NOT NULL,
    merchant_id  text NOT NULL,
    payments     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, merchant_id)
);
CREATE TABLE unrouted_hours (
    hour         timestamptz NOT NULL,
    merchant_id  text NOT NULL,
    payments     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, merchant_id)
);

ALTER TABLE figure_clock ADD COLUMN deliveries_offset_min integer;
-- Where a device's deliveries are summed (its slice when they were first counted; the
-- inspector moves them when the device is rebound or updated), and when a payment was counted
-- as announced to nobody (its received_at then; NULL: not counted).
ALTER TABLE devices
    ADD COLUMN announced_store     text,
    ADD COLUMN announced_model     text,
    ADD COLUMN announced_firmware  text;
ALTER TABLE payments ADD COLUMN unrouted_at timestamptz;
-- A device's deliveries (its card's figures, and moving them to its new slice), and a
-- merchant's payments by time (a merchant's or a field agent's delivery summary).
CREATE INDEX deliveries_device ON deliveries (device_id);
CREATE INDEX payments_merchant_received ON payments (merchant_id, received_at);

-- Groups of deliveries added to the rows (negative counts take them out): per group its local
-- day, its UTC hour (NULL: before the hours kept), slice, how many, how many played, and the
-- latency bucket (NULL: no play start). Rows are written in key order: no deadlocks.
CREATE FUNCTION add_deliveries(days date[], hours timestamptz[], stores text[], models text[], firmwares text[],
                               announced integer[], played integer[], lbs integer[]) RETURNS void
LANGUAGE sql AS $$
WITH g AS (
    SELECT * FROM unnest(days, hours, stores, models, firmwares, announced, played, lbs)
        AS g(day, hour, store, model, firmware, announced, played, lb)
),
d AS (
    INSERT INTO delivery_days AS t (day, store_id, model, firmware, announcements, played, lat_00, lat_01, lat_02, lat_03, lat_04, lat_05, lat_06, lat_07, lat_08, lat_09, lat_10, lat_11, lat_12, lat_13, lat_14, lat_15, lat_16, lat_17, lat_18, lat_19, lat_20, lat_21)
    SELECT day, store, model, firmware, sum(announced), sum(played),
           COALESCE(sum(announced) FILTER (WHERE lb = 0), 0), COALESCE(sum(announced) FILTER (WHERE lb = 1), 0), COALESCE(sum(announced) FILTER (WHERE lb = 2), 0),
           COALESCE(sum(announced) FILTER (WHERE lb = 3), 0), COALESCE(sum(announced) FILTER (WHERE lb = 4), 0), COALESCE(sum(announced) FILTER (WHERE lb = 5), 0),
           COALESCE(sum(announced) FILTER (WHERE lb = 6), 0), COALESCE(sum(announced) FILTER (WHERE lb = 7), 0), COALESCE(sum(announced) FILTER (WHERE lb = 8), 0),
           COALESCE(sum(announced) FILTER (WHERE lb = 9), 0), COALESCE(sum(announced) FILTER (WHERE lb = 10), 0), COALESCE(sum(announced) FILTER (WHERE lb = 11), 0),
           COALESCE(sum(announced) FILTER (WHERE lb = 12), 0), COALESCE(sum(announced) FILTER (WHERE lb = 13), 0), COALESCE(sum(announced) FILTER (WHERE lb = 14), 0),
           COALESCE(sum(announced) FILTER (WHERE lb = 15), 0), COALESCE(sum(announced) FILTER (WHERE lb = 16), 0), COALESCE(sum(announced) FILTER (WHERE lb = 17), 0),
           COALESCE(sum(announced) FILTER (WHERE lb = 18), 0), COALESCE(sum(announced) FILTER (WHERE lb = 19), 0), COALESCE(sum(announced) FILTER (WHERE lb = 20), 0),
           COALESCE(sum(announced) FILTER (WHERE lb = 21), 0)
    FROM g GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (day, store_id, model, firmware) DO UPDATE SET
    announcements = t.announcements + EXCLUDED.announcements, played = t.played + EXCLUDED.played,
    lat_00 = t.lat_00 + EXCLUDED.lat_00, lat_01 = t.lat_01 + EXCLUDED.lat_01, lat_02 = t.lat_02 + EXCLUDED.lat_02, lat_03 = t.lat_03 + EXCLUDED.lat_03,
    lat_04 = t.lat_04 + EXCLUDED.lat_04, lat_05 = t.lat_05 + EXCLUDED.lat_05, lat_06 = t.lat_06 + EXCLUDED.lat_06, lat_07 = t.lat_07 + EXCLUDED.lat_07,
    lat_08 = t.lat_08 + EXCLUDED.lat_08, lat_09 = t.lat_09 + EXCLUDED.lat_09, lat_10 = t.lat_10 + EXCLUDED.lat_10, lat_11 = t.lat_11 + EXCLUDED.lat_11,
    lat_12 = t.lat_12 + EXCLUDED.lat_12, lat_13 = t.lat_13 + EXCLUDED.lat_13, lat_14 = t.lat_14 + EXCLUDED.lat_14, lat_15 = t.lat_15 + EXCLUDED.lat_15,
    lat_16 = t.lat_16 + EXCLUDED.lat_16, lat_17 = t.lat_17 + EXCLUDED.lat_17, lat_18 = t.lat_18 + EXCLUDED.lat_18, lat_19 = t.lat_19 + EXCLUDED.lat_19,
    lat_20 = t.lat_20 + EXCLUDED.lat_20, lat_21 = t.lat_21 + EXCLUDED.lat_21
)
INSERT INTO delivery_hours AS t (hour, store_id, model, firmware, announcements, played, lat_00, lat_01, lat_02, lat_03, lat_04, lat_05, lat_06, lat_07, lat_08, lat_09, lat_10, lat_11, lat_12, lat_13, lat_14, lat_15, lat_16, lat_17, lat_18, lat_19, lat_20, lat_21)
SELECT hour, store, model, firmware, sum(announced), sum(played),
       COALESCE(sum(announced) FILTER (WHERE lb = 0), 0), COALESCE(sum(announced) FILTER (WHERE lb = 1), 0), COALESCE(sum(announced) FILTER (WHERE lb = 2), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 3), 0), COALESCE(sum(announced) FILTER (WHERE lb = 4), 0), COALESCE(sum(announced) FILTER (WHERE lb = 5), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 6), 0), COALESCE(sum(announced) FILTER (WHERE lb = 7), 0), COALESCE(sum(announced) FILTER (WHERE lb = 8), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 9), 0), COALESCE(sum(announced) FILTER (WHERE lb = 10), 0), COALESCE(sum(announced) FILTER (WHERE lb = 11), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 12), 0), COALESCE(sum(announced) FILTER (WHERE lb = 13), 0), COALESCE(sum(announced) FILTER (WHERE lb = 14), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 15), 0), COALESCE(sum(announced) FILTER (WHERE lb = 16), 0), COALESCE(sum(announced) FILTER (WHERE lb = 17), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 18), 0), COALESCE(sum(announced) FILTER (WHERE lb = 19), 0), COALESCE(sum(announced) FILTER (WHERE lb = 20), 0),
       COALESCE(sum(announced) FILTER (WHERE lb = 21), 0)
FROM g WHERE hour IS NOT NULL GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
ON CONFLICT (hour, store_id, model, firmware) DO UPDATE SET
announcements = t.announcements + EXCLUDED.announcements, played = t.played + EXCLUDED.played,
    lat_00 = t.lat_00 + EXCLUDED.lat_00, lat_01 = t.lat_01 + EXCLUDED.lat_01, lat_02 = t.lat_02 + EXCLUDED.lat_02, lat_03 = t.lat_03 + EXCLUDED.lat_03,
    lat_04 = t.lat_04 + EXCLUDED.lat_04, lat_05 = t.lat_05 + EXCLUDED.lat_05, lat_06 = t.lat_06 + EXCLUDED.lat_06, lat_07 = t.lat_07 + EXCLUDED.lat_07,
    lat_08 = t.lat_08 + EXCLUDED.lat_08, lat_09 = t.lat_09 + EXCLUDED.lat_09, lat_10 = t.lat_10 + EXCLUDED.lat_10, lat_11 = t.lat_11 + EXCLUDED.lat_11,
    lat_12 = t.lat_12 + EXCLUDED.lat_12, lat_13 = t.lat_13 + EXCLUDED.lat_13, lat_14 = t.lat_14 + EXCLUDED.lat_14, lat_15 = t.lat_15 + EXCLUDED.lat_15,
    lat_16 = t.lat_16 + EXCLUDED.lat_16, lat_17 = t.lat_17 + EXCLUDED.lat_17, lat_18 = t.lat_18 + EXCLUDED.lat_18, lat_19 = t.lat_19 + EXCLUDED.lat_19,
    lat_20 = t.lat_20 + EXCLUDED.lat_20, lat_21 = t.lat_21 + EXCLUDED.lat_21
$$;

CREATE FUNCTION add_unrouted(days date[], hours timestamptz[], merchants text[], n integer[]) RETURNS void
LANGUAGE sql AS $$
WITH g AS (SELECT * FROM unnest(days, hours, merchants, n) AS g(day, hour, merchant_id, n)),
d AS (
    INSERT INTO unrouted_days AS t SELECT day, merchant_id, sum(n) FROM g GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (day, merchant_id) DO UPDATE SET payments = t.payments + EXCLUDED.payments
)
INSERT INTO unrouted_hours AS t SELECT hour, merchant_id, sum(n) FROM g WHERE hour IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (hour, merchant_id) DO UPDATE SET payments = t.payments + EXCLUDED.payments
$$;

-- Changed deliveries (payment, device, status, play start, +1 for the new version or -1 for
-- the old) into the rows, under the rollup lock for deliveries (shared; the rebuild and the
-- moves take it exclusive: fleet_server.figures.delivery_rollups.DELIVERY_LOCK). A device's
-- first counted delivery fixes its slice: its merchant's store, else its own (as
-- fleet_server.db.hierarchy.DEVICE_HIERARCHY places it), model and firmware.
CREATE FUNCTION roll_deliveries(ids text[], devs text[], statuses text[], started timestamptz[], signs integer[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    off integer;
    hours_from timestamptz;
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
    PERFORM add_deliveries(array_agg(day), array_agg(hour), array_agg(store), array_agg(model), array_agg(firmware),
                           array_agg(n), array_agg(p), array_agg(lb))
    FROM (
        SELECT local_day(p.received_at, off) AS day,
               CASE WHEN p.received_at >= hours_from THEN utc_hour(p.received_at) END AS hour,
               d.announced_store AS store, d.announced_model AS model, d.announced_firmware AS firmware,
               latency_bucket(c.started, p.received_at) AS lb,
               sum(c.sign)::int AS n, COALESCE(sum(c.sign) FILTER (WHERE delivery_heard(c.status)), 0)::int AS p
        FROM unnest(ids, devs, statuses, started, signs) AS c(payment_id, device_id, status, started, sign)
        JOIN payments p USING (payment_id) JOIN devices d ON d.device_id = c.device_id
        WHERE delivery_counted(p.kind, c.status)
        GROUP BY 1, 2, 3, 4, 5, 6
    ) g;
END
$$;

-- The triggers do nothing while the rollups are not built (a bulk load before the first build
-- costs no more than without them).
CREATE FUNCTION deliveries_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT deliveries_offset_min FROM figure_clock) IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM roll_deliveries(array_agg(payment_id), array_agg(device_id), array_agg(status),
                            array_agg(play_started_at), array_agg(1))
    FROM new_rows WHERE status <> 'pending' HAVING count(*) > 0;
    PERFORM roll_unrouted(array_agg(DISTINCT payment_id)) FROM new_rows HAVING count(*) > 0;
    RETURN NULL;
END
$$;
CREATE FUNCTION deliveries_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT deliveries_offset_min FROM figure_clock) IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM roll_deliveries(array_agg(payment_id), array_agg(device_id), array_agg(status),
                            array_agg(play_started_at), array_agg(sign))
    FROM (
        SELECT o.payment_id, o.device_id, v.status, v.play_started_at, v.sign
        FROM old_rows o JOIN new_rows n USING (payment_id, device_id),
        LATERAL (VALUES (o.status, o.play_started_at, -1), (n.status, n.play_started_at, 1))
            AS v(status, play_started_at, sign)
        WHERE (o.status, o.play_started_at) IS DISTINCT FROM (n.status, n.play_started_at) AND v.status <> 'pending'
    ) c HAVING count(*) > 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_inserted AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION deliveries_inserted();
CREATE TRIGGER deliveries_updated AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION deliveries_updated();

-- Payments announced to nobody: counted (payments.unrouted_at) when a payment or a refund has no
-- delivery at all, uncounted when it gets one; checked whenever a payment is written and
-- whenever deliveries are added.
CREATE FUNCTION roll_unrouted(ids text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    off integer;
    hours_from timestamptz;
    days date[];
    hours timestamptz[];
    merchants text[];
    n integer[];
BEGIN
    IF ids IS NULL OR NOT EXISTS (
        SELECT 1 FROM unnest(ids) AS i (payment_id) JOIN payments p USING (payment_id)
        WHERE p.unrouted_at IS NOT NULL OR p.kind IN ('payment', 'refund')
    ) THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1212416038);
    SELECT c.deliveries_offset_min, c.hours_from INTO off, hours_from FROM figure_clock c;
    IF off IS NULL THEN
        RETURN;
    END IF;
    -- The payments whose count changes, marked; a row another transaction changed meanwhile
    -- is skipped by the recheck (unrouted_at no longer what was read).
    WITH changed AS (
        UPDATE payments p SET unrouted_at = c.now_at
        FROM (
            SELECT p.payment_id, p.unrouted_at AS was,
                   CASE WHEN p.kind IN ('payment', 'refund')
                             AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.payment_id = p.payment_id)
                        THEN p.received_at END AS now_at
            FROM unnest(ids) AS i (payment_id) JOIN payments p USING (payment_id)
        ) c
        WHERE p.payment_id = c.payment_id AND c.was IS DISTINCT FROM c.now_at
          AND p.unrouted_at IS NOT DISTINCT FROM c.was
        RETURNING p.merchant_id, c.was, c.now_at
    )
    SELECT array_agg(local_day(at, off)), array_agg(CASE WHEN at >= hours_from THEN utc_hour(at) END),
           array_agg(COALESCE(merchant_id, '')), array_agg(k)
    INTO days, hours, merchants, n
    FROM (SELECT merchant_id, was AS at, -1 AS k FROM changed WHERE was IS NOT NULL
          UNION ALL SELECT merchant_id, now_at, 1 FROM changed WHERE now_at IS NOT NULL) c;
    PERFORM add_unrouted(days, hours, merchants, n);
END
$$;
CREATE FUNCTION payments_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() > 1 OR (SELECT deliveries_offset_min FROM figure_clock) IS NULL THEN
        RETURN NULL;  -- roll_unrouted's own update of unrouted_at, or the rollups not built
    END IF;
    PERFORM roll_unrouted(array_agg(payment_id)) FROM new_rows
    WHERE unrouted_at IS NOT NULL OR kind IN ('payment', 'refund') HAVING count(*) > 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER payments_inserted AFTER INSERT ON payments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION payments_written();
CREATE TRIGGER payments_updated AFTER UPDATE ON payments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION payments_written();

