-- OTA: releases (a signed manifest and its artifact), campaigns with a lane of waves per device
-- model, each device's place in a campaign (ota_targets, from 0002), and every report a device
-- sent about it.

CREATE TABLE ota_releases (
    name        text NOT NULL,
    version     text NOT NULL,
    manifest    jsonb NOT NULL,      -- as signed with the release key; devices check it again
    sha256      text NOT NULL,
    size        bigint NOT NULL,
    models      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    uploaded_at timestamptz,         -- null until an artifact matching the manifest arrived
    PRIMARY KEY (name, version)
);

CREATE TABLE ota_campaigns (
    campaign_id   text PRIMARY KEY,
    release_name  text NOT NULL,
    version       text NOT NULL,
    selector      jsonb NOT NULL,    -- what was targeted, as asked
    policy        jsonb NOT NULL,    -- waves, thresholds, window, timeout, attempts, rate
    status        text NOT NULL,     -- running | paused | aborted | completed
    status_reason text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (release_name, version) REFERENCES ota_releases (name, version)
);

-- Each device model in a campaign moves through the waves on its own, so a release that fails
-- on one model is paused there and goes on elsewhere.
CREATE TABLE ota_lanes (
    campaign_id   text NOT NULL REFERENCES ota_campaigns (campaign_id),
    model         text NOT NULL,
    wave          integer NOT NULL DEFAULT 0,   -- index into the policy's waves now offered
    status        text NOT NULL,                -- running | paused | completed
    status_reason text,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, model)
);

-- state: pending (not offered yet), offered, then what the device reports (queued ...
-- committed | rolled_back | failed), or unreachable (offline when its time ran out).
ALTER TABLE ota_targets
    ADD COLUMN model          text,
    ADD COLUMN wave           integer NOT NULL DEFAULT 0,
    ADD COLUMN from_version   text,
    ADD COLUMN attempts       integer NOT NULL DEFAULT 0,
    ADD COLUMN offered_at     timestamptz,
    ADD COLUMN updated_at     timestamptz,
    ADD COLUMN bytes_done     bigint NOT NULL DEFAULT 0,
    ADD COLUMN failure        text,
    ADD COLUMN window_start   text,
    ADD COLUMN window_end     text,
    ADD COLUMN utc_offset_min integer NOT NULL DEFAULT 480;
CREATE INDEX ota_targets_device ON ota_targets (device_id);
CREATE INDEX ota_targets_active ON ota_targets (campaign_id, state);

CREATE TABLE ota_reports (
    campaign_id text NOT NULL,
    device_id   text NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    state       text NOT NULL,
    running     text,
    attempt     integer,
    failure     text,
    reason      text
);
CREATE INDEX ota_reports_target ON ota_reports (campaign_id, device_id, ts);

-- What the device says it runs from (hello), and tags for targeting ("pilot", "night-shop").
ALTER TABLE devices
    ADD COLUMN slot text,
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
