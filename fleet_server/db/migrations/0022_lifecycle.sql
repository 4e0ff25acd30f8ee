-- The device's life beside its operational state (fleet_server/lifecycle): in stock, allocated
-- to a store, installed, in service, returned, in repair, scrapped, lost. NULL: registered
-- before the lifecycle (the registry import), deployed once it is seen, as before.
ALTER TABLE devices ADD COLUMN stage text, ADD COLUMN stage_since timestamptz;
CREATE INDEX devices_stage ON devices (stage, store_id) WHERE stage IS NOT NULL;

-- Every change of stage, by whom and why (the API also writes the audit log).
CREATE TABLE device_stages (
    seq       bigserial PRIMARY KEY,
    device_id text NOT NULL REFERENCES devices (device_id),
    at        timestamptz NOT NULL,
    stage     text NOT NULL,
    previous  text,
    action    text NOT NULL,
    by_login  text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX device_stages_device ON device_stages (device_id, at DESC);
