-- Trust: device credentials, and the sensitive merchant and field-agent fields encrypted at rest.

-- A device's MQTT secret is derived from the fleet's device master key, its id and the
-- generation (see firmware_protocols.credentials); only the generation and revocation are kept.
CREATE TABLE device_credentials (
    device_id   text PRIMARY KEY,
    generation  integer NOT NULL CHECK (generation >= 1),
    issued_at   timestamptz NOT NULL DEFAULT now(),
    issued_by   text NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text,
    -- The serial of the client certificate issued with this generation, if any (mutual TLS).
    cert_serial numeric(50, 0)
);

-- Sensitive fields as AES-256-GCM envelopes ("<key id>:<base64 nonce+ciphertext>"), and a
-- keyed hash (HMAC-SHA256) of the ones looked up by value.
ALTER TABLE merchants
    ADD COLUMN contact_name_enc       text,
    ADD COLUMN phone_enc              text,
    ADD COLUMN phone_hash             bytea,
    ADD COLUMN settlement_account_enc text;
CREATE INDEX merchants_phone_hash ON merchants (phone_hash) WHERE phone_hash IS NOT NULL;

ALTER TABLE field_agents
    ADD COLUMN phone_enc  text,
    ADD COLUMN phone_hash bytea;
CREATE INDEX field_agents_phone_hash ON field_agents (phone_hash) WHERE phone_hash IS NOT NULL;
-- The plaintext column goes: the server encrypts what it holds at start (FieldCipher).
ALTER TABLE field_agents RENAME COLUMN phone TO phone_plaintext_legacy;
