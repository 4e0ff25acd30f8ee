-- Sealed days (issue 25, docs/architecture.md "Figures from rollups"): the day rows of local
-- days that have ended, summed again by store alone, so that a figure over the hierarchy
-- (fleet, city, district, store) reads one row per store and day instead of one per store,
-- model and firmware. At 500 stores and 6 models x firmware that is 6 times fewer rows; the
-- gain grows with every firmware a rollout adds.
--
-- figure_clock.sealed_through is the last local day sealed (NULL: none, and the store tables
-- empty). Sealing a day adds its day rows to the store rows; after that every change of a day
-- row of a sealed day (late acknowledgements, a device's rows moved to its new store, a
-- rebuild) reaches the store rows through the triggers below, in the same statement. So the
-- store rows equal the sums of the day rows at every moment, whoever writes them. The days
-- still open (today, and yesterday until the checkpoint after midnight) are read from the day
-- rows; their writes, the bridge's hot path, only check the date.
--
-- Sealing takes both rollup locks exclusive (fleet_server.devices.rollups.seal), so no writer
-- that read the old sealed_through is still open when the day's rows are summed.

CREATE TABLE figure_store_days (
    day            date NOT NULL,
    store_id       text NOT NULL,
    deployed_s     double precision NOT NULL DEFAULT 0,
    up_s           double precision NOT NULL DEFAULT 0,
    failure_s      double precision NOT NULL DEFAULT 0,
    good_s         double precision NOT NULL DEFAULT 0,
    b_expected_s   double precision NOT NULL DEFAULT 0,
    b_up_s         double precision NOT NULL DEFAULT 0,
    failures       integer NOT NULL DEFAULT 0,
    repairs        integer NOT NULL DEFAULT 0,
    repair_s       double precision NOT NULL DEFAULT 0,
    seen_devices   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, store_id)
);
CREATE TABLE delivery_store_days (
    day            date NOT NULL,
    store_id       text NOT NULL,
    announcements  integer NOT NULL DEFAULT 0,
    played         integer NOT NULL DEFAULT 0,
    lat_00 integer NOT NULL DEFAULT 0, lat_01 integer NOT NULL DEFAULT 0, lat_02 integer NOT NULL DEFAULT 0, lat_03 integer NOT NULL DEFAULT 0, lat_04 integer NOT NULL DEFAULT 0, lat_05 integer NOT NULL DEFAULT 0,
    lat_06 integer NOT NULL DEFAULT 0, lat_07 integer NOT NULL DEFAULT 0, lat_08 integer NOT NULL DEFAULT 0, lat_09 integer NOT NULL DEFAULT 0, lat_10 integer NOT NULL DEFAULT 0, lat_11 integer NOT NULL DEFAULT 0,
    lat_12 integer NOT NULL DEFAULT 0, lat_13 integer NOT NULL DEFAULT 0, lat_14 integer NOT NULL DEFAULT 0, lat_15 integer NOT NULL DEFAULT 0, lat_16 integer NOT NULL DEFAULT 0, lat_17 integer NOT NULL DEFAULT 0,
    lat_18 integer NOT NULL DEFAULT 0, lat_19 integer NOT NULL DEFAULT 0, lat_20 integer NOT NULL DEFAULT 0, lat_21 integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, store_id)
);
ALTER TABLE figure_clock ADD COLUMN sealed_through date;

-- Day rows into the store rows: `plus` added, `minus` taken away (either may be NULL). Rows are
-- written in key order: no deadlocks.
CREATE FUNCTION figure_store_add(plus figure_days[], minus figure_days[]) RETURNS void LANGUAGE sql AS $$
INSERT INTO figure_store_days AS t
SELECT day, store_id, sum(k * deployed_s), sum(k * up_s), sum(k * failure_s), sum(k * good_s), sum(k * b_expected_s),
       sum(k * b_up_s), sum(k * failures), sum(k * repairs), sum(k * repair_s), sum(k * seen_devices)
FROM (SELECT 1 AS k, * FROM unnest(plus) UNION ALL SELECT -1, * FROM unnest(minus)) r
GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (day, store_id) DO UPDATE SET
    deployed_s = t.deployed_s + EXCLUDED.deployed_s, up_s = t.up_s + EXCLUDED.up_s,
    failure_s = t.failure_s + EXCLUDED.failure_s, good_s = t.good_s + EXCLUDED.good_s,
    b_expected_s = t.b_expected_s + EXCLUDED.b_expected_s, b_up_s = t.b_up_s + EXCLUDED.b_up_s,
    failures = t.failures + EXCLUDED.failures, repairs = t.repairs + EXCLUDED.repairs,
    repair_s = t.repair_s + EXCLUDED.repair_s, seen_devices = t.seen_devices + EXCLUDED.seen_devices
$$;
CREATE FUNCTION delivery_store_add(plus delivery_days[], minus delivery_days[]) RETURNS void LANGUAGE sql AS $$
INSERT INTO delivery_store_days AS t
SELECT day, store_id, sum(k * announcements), sum(k * played),
       sum(k * lat_00), sum(k * lat_01), sum(k * lat_02), sum(k * lat_03), sum(k * lat_04), sum(k * lat_05),
       sum(k * lat_06), sum(k * lat_07), sum(k * lat_08), sum(k * lat_09), sum(k * lat_10), sum(k * lat_11),
       sum(k * lat_12), sum(k * lat_13), sum(k * lat_14), sum(k * lat_15), sum(k * lat_16), sum(k * lat_17),
       sum(k * lat_18), sum(k * lat_19), sum(k * lat_20), sum(k * lat_21)
FROM (SELECT 1 AS k, * FROM unnest(plus) UNION ALL SELECT -1, * FROM unnest(minus)) r
GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (day, store_id) DO UPDATE SET
    announcements = t.announcements + EXCLUDED.announcements, played = t.played + EXCLUDED.played,
    lat_00 = t.lat_00 + EXCLUDED.lat_00, lat_01 = t.lat_01 + EXCLUDED.lat_01, lat_02 = t.lat_02 + EXCLUDED.lat_02, lat_03 = t.lat_03 + EXCLUDED.lat_03,
    lat_04 = t.lat_04 + EXCLUDED.lat_04, lat_05 = t.lat_05 + EXCLUDED.lat_05, lat_06 = t.lat_06 + EXCLUDED.lat_06, lat_07 = t.lat_07 + EXCLUDED.lat_07,
    lat_08 = t.lat_08 + EXCLUDED.lat_08, lat_09 = t.lat_09 + EXCLUDED.lat_09, lat_10 = t.lat_10 + EXCLUDED.lat_10, lat_11 = t.lat_11 + EXCLUDED.lat_11,
    lat_12 = t.lat_12 + EXCLUDED.lat_12, lat_13 = t.lat_13 + EXCLUDED.lat_13, lat_14 = t.lat_14 + EXCLUDED.lat_14, lat_15 = t.lat_15 + EXCLUDED.lat_15,
    lat_16 = t.lat_16 + EXCLUDED.lat_16, lat_17 = t.lat_17 + EXCLUDED.lat_17, lat_18 = t.lat_18 + EXCLUDED.lat_18, lat_19 = t.lat_19 + EXCLUDED.lat_19,
    lat_20 = t.lat_20 + EXCLUDED.lat_20, lat_21 = t.lat_21 + EXCLUDED.lat_21
$$;

-- Every change of a sealed day's row, into the store rows (one trigger per event: a trigger
-- with transition tables has one).
CREATE FUNCTION figure_days_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sealed date := (SELECT sealed_through FROM figure_clock);
BEGIN
    IF sealed IS NULL THEN
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM figure_store_add(array_agg(ROW(n.*)::figure_days), NULL) FROM new_rows n WHERE n.day <= sealed HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM figure_store_add(NULL, array_agg(ROW(o.*)::figure_days)) FROM old_rows o WHERE o.day <= sealed HAVING count(*) > 0;
    ELSIF EXISTS (SELECT 1 FROM old_rows o WHERE o.day <= sealed) OR EXISTS (SELECT 1 FROM new_rows n WHERE n.day <= sealed) THEN
        PERFORM figure_store_add((SELECT array_agg(ROW(n.*)::figure_days) FROM new_rows n WHERE n.day <= sealed),
                                 (SELECT array_agg(ROW(o.*)::figure_days) FROM old_rows o WHERE o.day <= sealed));
    END IF;
    RETURN NULL;
END
$$;
CREATE FUNCTION delivery_days_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sealed date := (SELECT sealed_through FROM figure_clock);
BEGIN
    IF sealed IS NULL THEN
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM delivery_store_add(array_agg(ROW(n.*)::delivery_days), NULL) FROM new_rows n WHERE n.day <= sealed HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM delivery_store_add(NULL, array_agg(ROW(o.*)::delivery_days)) FROM old_rows o WHERE o.day <= sealed HAVING count(*) > 0;
    ELSIF EXISTS (SELECT 1 FROM old_rows o WHERE o.day <= sealed) OR EXISTS (SELECT 1 FROM new_rows n WHERE n.day <= sealed) THEN
        PERFORM delivery_store_add((SELECT array_agg(ROW(n.*)::delivery_days) FROM new_rows n WHERE n.day <= sealed),
                                   (SELECT array_agg(ROW(o.*)::delivery_days) FROM old_rows o WHERE o.day <= sealed));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER figure_days_inserted AFTER INSERT ON figure_days
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION figure_days_changed();
CREATE TRIGGER figure_days_updated AFTER UPDATE ON figure_days
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION figure_days_changed();
CREATE TRIGGER figure_days_deleted AFTER DELETE ON figure_days
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION figure_days_changed();
CREATE TRIGGER delivery_days_inserted AFTER INSERT ON delivery_days
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_days_changed();
CREATE TRIGGER delivery_days_updated AFTER UPDATE ON delivery_days
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_days_changed();
CREATE TRIGGER delivery_days_deleted AFTER DELETE ON delivery_days
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_days_changed();

-- Seal the local days up to `through`: their day rows summed into the store rows, one day at a
-- time. A day already sealed is not sealed again.
CREATE FUNCTION seal_days(through date) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    was date := (SELECT sealed_through FROM figure_clock);
    first date;
    d date;
    n integer := 0;
BEGIN
    IF was IS NOT NULL AND through <= was THEN
        RETURN 0;
    END IF;
    first := COALESCE(was + 1, LEAST((SELECT min(day) FROM figure_days), (SELECT min(day) FROM delivery_days)));
    d := first;
    WHILE d IS NOT NULL AND d <= through LOOP
        PERFORM figure_store_add(array_agg(r), NULL) FROM figure_days r WHERE r.day = d HAVING count(*) > 0;
        PERFORM delivery_store_add(array_agg(r), NULL) FROM delivery_days r WHERE r.day = d HAVING count(*) > 0;
        n := n + 1;
        d := d + 1;
    END LOOP;
    UPDATE figure_clock SET sealed_through = through;
    RETURN n;
END
$$;
-- Nothing sealed: the store rows emptied (before a rebuild, which seals again after).
CREATE FUNCTION unseal_days() RETURNS void LANGUAGE sql AS $$
    UPDATE figure_clock SET sealed_through = NULL;
    DELETE FROM figure_store_days;
    DELETE FROM delivery_store_days;
$$;
