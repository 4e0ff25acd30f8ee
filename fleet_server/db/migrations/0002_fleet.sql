-- The fleet: hierarchy and registry, device state history, partitioned telemetry with a daily
-- rollup, learned cell fingerprints, field-agent tasks, and OTA targets (filled by OTA campaigns).

CREATE TABLE cities (
    city_id   text PRIMARY KEY,
    name      text NOT NULL
);

CREATE TABLE districts (          -- 商圈
    district_id text PRIMARY KEY,
    city_id     text NOT NULL REFERENCES cities (city_id),
    name        text NOT NULL
);

CREATE TABLE field_agents (       -- 经纪人
    agent_id  text PRIMARY KEY,
    name      text NOT NULL,
    phone     text
);

CREATE TABLE stores (             -- 门店, the field agents' office
    store_id    text PRIMARY KEY,
    district_id text NOT NULL REFERENCES districts (district_id),
    name        text NOT NULL,
    agent_id    text REFERENCES field_agents (agent_id)
);

CREATE TABLE merchants (
    merchant_id    text PRIMARY KEY,
    store_id       text NOT NULL REFERENCES stores (store_id),
    name           text NOT NULL,
    -- Business hours in the merchant's local time, for planned availability.
    business_open  time NOT NULL DEFAULT '08:00',
    business_close time NOT NULL DEFAULT '22:00',
    utc_offset_min integer NOT NULL DEFAULT 480
);

-- What the device reports in its hello is kept apart from the registry's serial number, which
-- is unique: a device claiming another's serial must not break ingest, it is a finding.
ALTER TABLE devices RENAME COLUMN serial TO reported_serial;
ALTER TABLE devices
    ADD COLUMN serial          text,
    ADD COLUMN store_id        text REFERENCES stores (store_id),
    ADD COLUMN agent_id        text REFERENCES field_agents (agent_id),
    ADD COLUMN installed_at    timestamptz,
    ADD COLUMN first_contact   timestamptz,     -- its first message, whenever it was registered
    ADD COLUMN install_address text,
    ADD COLUMN install_lat     double precision,
    ADD COLUMN install_lon     double precision,
    ADD COLUMN planned_removal boolean NOT NULL DEFAULT false,
    ADD COLUMN state           text,
    ADD COLUMN state_since     timestamptz,
    ADD COLUMN healthy_streak  integer NOT NULL DEFAULT 0,
    ADD COLUMN last_cell       text,
    ADD COLUMN last_gps_lat    double precision,
    ADD COLUMN last_gps_lon    double precision;
CREATE UNIQUE INDEX devices_serial ON devices (serial) WHERE serial IS NOT NULL;
CREATE INDEX devices_state ON devices (state);

-- Every state change with its cause: every figure is recomputed from this table.
CREATE TABLE device_states (
    seq        bigserial PRIMARY KEY,
    device_id  text NOT NULL,
    at         timestamptz NOT NULL,
    state      text NOT NULL,
    previous   text,
    cause      text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX device_states_device_at ON device_states (device_id, at, seq);
CREATE INDEX device_states_at ON device_states (at);

-- Cells a device has been served by; those seen while learning (after installation) are its
-- location fingerprint.
CREATE TABLE device_cells (
    device_id  text NOT NULL,
    cell       text NOT NULL,           -- mcc-mnc-area-cell_id
    area       text NOT NULL,           -- mcc-mnc-area
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    reports    bigint NOT NULL DEFAULT 0,
    learned    boolean NOT NULL,
    PRIMARY KEY (device_id, cell)
);

-- One row per device and local day on which it sent anything: power-on rate and detectors
-- read this instead of the raw telemetry.
CREATE TABLE device_daily (
    device_id      text NOT NULL,
    day            date NOT NULL,
    messages       bigint NOT NULL,
    health_reports bigint NOT NULL,
    fault_events   bigint NOT NULL,
    audio_failures bigint NOT NULL,
    reconnects     bigint NOT NULL,
    min_rssi_dbm   smallint,
    first_at       timestamptz NOT NULL,
    last_at        timestamptz NOT NULL,
    PRIMARY KEY (device_id, day)
);
CREATE INDEX device_daily_day ON device_daily (day);

-- 工单: at most one open task per device and kind; a new finding merges into it.
CREATE TABLE tasks (
    task_id            bigserial PRIMARY KEY,
    device_id          text NOT NULL,
    kind               text NOT NULL,
    status             text NOT NULL DEFAULT 'open',
    store_id           text,
    agent_id           text,
    confidence         double precision NOT NULL,
    evidence           jsonb NOT NULL,
    action_zh          text NOT NULL,
    action_en          text NOT NULL,
    occurrences        integer NOT NULL DEFAULT 1,
    opened_at          timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    started_at         timestamptz,
    close_requested_at timestamptz,
    close_note         text,
    closed_at          timestamptz,
    verification       text
);
CREATE UNIQUE INDEX tasks_one_open ON tasks (device_id, kind) WHERE status <> 'closed';
CREATE INDEX tasks_agent ON tasks (agent_id, status);
CREATE INDEX tasks_store ON tasks (store_id, status);

-- Which devices an OTA campaign targets and where each ended; OTA campaigns fill it.
CREATE TABLE ota_targets (
    campaign_id    text NOT NULL,
    device_id      text NOT NULL,
    target_version text NOT NULL,
    state          text NOT NULL,       -- queued ... committed | rolled_back | failed | unreachable
    reason         text,
    targeted_at    timestamptz NOT NULL,
    finished_at    timestamptz,
    PRIMARY KEY (campaign_id, device_id)
);

-- Business seconds from the epoch to `t` for daily hours [open_s, close_s) (seconds after local
-- midnight; close <= open means the hours cross midnight) at UTC offset `off_s`: the business
-- time inside an interval is the difference of its two ends, in constant time.
CREATE FUNCTION business_seconds(t timestamptz, off_s double precision, open_s double precision,
                                 close_s double precision) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- One expression, no FROM: PostgreSQL inlines it into the calling query.
    SELECT CASE WHEN close_s > open_s
        THEN floor((date_part('epoch', t) + off_s) / 86400) * (close_s - open_s)
             + LEAST(GREATEST((date_part('epoch', t) + off_s)
                              - floor((date_part('epoch', t) + off_s) / 86400) * 86400 - open_s, 0),
                     close_s - open_s)
        ELSE floor((date_part('epoch', t) + off_s) / 86400) * (close_s + 86400 - open_s)
             + LEAST((date_part('epoch', t) + off_s) - floor((date_part('epoch', t) + off_s) / 86400) * 86400,
                     close_s)
             + GREATEST((date_part('epoch', t) + off_s)
                        - floor((date_part('epoch', t) + off_s) / 86400) * 86400 - open_s, 0)
    END::double precision
$$;

-- Telemetry: TimescaleDB hypertables with compression and retention where the extension can be
-- loaded, native daily range partitions otherwise (created ahead and dropped past retention by
-- the server). The DO block keeps both in one migration; the extension's functions are called
-- through EXECUTE so this parses without it.
ALTER TABLE device_health RENAME TO device_health_v1;
ALTER TABLE device_events RENAME TO device_events_v1;
ALTER INDEX device_health_device_ts RENAME TO device_health_v1_device_ts;
ALTER INDEX device_events_device_ts RENAME TO device_events_v1_device_ts;
DO $$
DECLARE
    timescale boolean := false;
BEGIN
    -- 'off' when the migrator found the extension cannot be loaded (fleet_server.db.timescale):
    -- trying would end the session when it is not preloaded.
    IF COALESCE(NULLIF(current_setting('haodian.timescaledb', true), ''), 'on') <> 'off'
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            timescale := true;
        EXCEPTION WHEN others THEN
            RAISE NOTICE 'timescaledb is available but cannot be loaded (%); using native partitions', SQLERRM;
        END;
    END IF;
    IF timescale THEN
        CREATE TABLE device_health (LIKE device_health_v1);
        CREATE TABLE device_events (LIKE device_events_v1);
        EXECUTE $q$SELECT create_hypertable('device_health', 'ts', chunk_time_interval => INTERVAL '1 day')$q$;
        EXECUTE $q$SELECT create_hypertable('device_events', 'ts', chunk_time_interval => INTERVAL '1 day')$q$;
        EXECUTE 'ALTER TABLE device_health SET (timescaledb.compress, timescaledb.compress_segmentby = ''device_id'')';
        EXECUTE 'ALTER TABLE device_events SET (timescaledb.compress, timescaledb.compress_segmentby = ''device_id'')';
        EXECUTE $q$SELECT add_compression_policy('device_health', INTERVAL '3 days')$q$;
        EXECUTE $q$SELECT add_compression_policy('device_events', INTERVAL '3 days')$q$;
        EXECUTE $q$SELECT add_retention_policy('device_health', INTERVAL '90 days')$q$;
        EXECUTE $q$SELECT add_retention_policy('device_events', INTERVAL '90 days')$q$;
    ELSE
        CREATE TABLE device_health (LIKE device_health_v1) PARTITION BY RANGE (ts);
        CREATE TABLE device_events (LIKE device_events_v1) PARTITION BY RANGE (ts);
        -- Rows outside every daily partition (a device clock far off) land here, never lost.
        CREATE TABLE device_health_default PARTITION OF device_health DEFAULT;
        CREATE TABLE device_events_default PARTITION OF device_events DEFAULT;
    END IF;
END
$$;
CREATE INDEX device_health_device_ts ON device_health (device_id, ts DESC);
CREATE INDEX device_events_device_ts ON device_events (device_id, ts DESC);
INSERT INTO device_health SELECT * FROM device_health_v1;
INSERT INTO device_events SELECT * FROM device_events_v1;
DROP TABLE device_health_v1;
DROP TABLE device_events_v1;
