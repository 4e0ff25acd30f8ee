-- Poison messages and reports the servers can trust (issue 22).

-- What a consumer could not take: refused by the protocol's parser, by a signature check, or
-- by the database. Kept byte for byte (up to 64 KiB; payload_bytes says how long it was), one
-- row per distinct message and consumer however often the broker sends it again (`copies`).
CREATE TABLE quarantine (
    id            bigserial PRIMARY KEY,
    digest        bytea NOT NULL UNIQUE,      -- SHA-256 of consumer, topic and payload
    consumer      text NOT NULL,              -- ingest, bridge-acks, results, ota
    topic         text NOT NULL,
    device_id     text,
    reason        text NOT NULL CHECK (reason IN ('topic', 'payload', 'signature', 'session', 'store')),
    error         text NOT NULL,
    payload       bytea NOT NULL,
    payload_bytes integer NOT NULL,
    first_at      timestamptz NOT NULL,
    last_at       timestamptz NOT NULL,
    copies        integer NOT NULL DEFAULT 1
);
CREATE INDEX quarantine_last ON quarantine (last_at DESC);
CREATE INDEX quarantine_device ON quarantine (device_id, last_at DESC) WHERE device_id IS NOT NULL;

-- A device that has once sent a report signed with its current secret signs from then on: an
-- unsigned report from it is a forgery. Set by the servers on the first verified signature,
-- cleared by a rotation (the next generation's row starts unset).
ALTER TABLE device_credentials ADD COLUMN signs_reports_at timestamptz;

-- The connection a device last said it is online on (its presence `session`): an offline
-- presence counts only for that one.
ALTER TABLE devices ADD COLUMN presence_session text;

-- Whether the ack that settled a delivery was signed by its device (null: no ack yet, or from
-- before signing): the figures say how many were not.
ALTER TABLE deliveries ADD COLUMN ack_signed boolean;
