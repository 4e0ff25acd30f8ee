-- People and what they did: accounts with a role, the stores a field agent answers for,
-- sessions (and API tokens) kept only as hashes, the audit log of every change, and what the
-- pages send to devices (remote commands with their results, the merchant's settings).

CREATE TABLE users (
    user_id       bigserial PRIMARY KEY,
    login         text NOT NULL UNIQUE,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('ops-admin', 'ops-viewer', 'field-agent', 'merchant', 'backend')),
    -- argon2id, in its PHC string form; null for service accounts that only hold API tokens.
    password_hash text,
    merchant_id   text,             -- a merchant's own merchant (bindings.merchant_id)
    agent_id      text,             -- a field agent's id in tasks and the registry
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'merchant' OR merchant_id IS NOT NULL)
);

-- The stores a field agent answers for: what they see, and nothing else.
CREATE TABLE user_stores (
    user_id  bigint NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    store_id text NOT NULL,
    PRIMARY KEY (user_id, store_id)
);

CREATE TABLE sessions (
    token_sha256 bytea PRIMARY KEY,   -- the token itself is never stored
    user_id      bigint NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('session', 'api')),
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE audit_log (
    audit_id  bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    user_id   bigint,
    login     text NOT NULL,
    role      text NOT NULL,
    action    text NOT NULL,          -- e.g. device.command, task.close, ota.pause, auth.login_failed
    target    text NOT NULL,          -- what it acted on: a device id, task id, campaign id, login
    outcome   text NOT NULL,          -- ok / denied / failed
    detail    jsonb NOT NULL DEFAULT '{}',
    client_ip text
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
CREATE INDEX audit_log_target ON audit_log (target, at DESC);

CREATE TABLE device_commands (
    command_id  text PRIMARY KEY,
    device_id   text NOT NULL,
    name        text NOT NULL,
    args        jsonb NOT NULL DEFAULT '{}',
    issued_by   text NOT NULL,
    issued_at   timestamptz NOT NULL,
    status      text NOT NULL,        -- sent, then the device's: accepted / succeeded / failed / refused / duplicate
    reason      text,
    result      jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL
);
CREATE INDEX device_commands_device ON device_commands (device_id, issued_at DESC);

-- The merchant's settings as last sent (retained on the broker too); the device's health
-- reports say which version it holds.
CREATE TABLE device_settings (
    device_id  text PRIMARY KEY,
    version    bigint NOT NULL,
    settings   jsonb NOT NULL,
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL
);
