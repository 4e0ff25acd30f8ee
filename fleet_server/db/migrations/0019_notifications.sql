-- Where task notifications go, and what is queued for them (fleet_server/notify).
--
-- A channel is a 企业微信 group robot, a 钉钉 custom robot or a generic signed webhook, for the
-- whole fleet (ops), one store, or one field agent. Its URL carries the robot's key, so it is kept
-- sealed like the merchants' phones (FieldCipher), with its signing secret.
CREATE TABLE notify_channels (
    channel_id  bigserial PRIMARY KEY,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('wecom', 'dingtalk', 'webhook')),
    store_id    text REFERENCES stores (store_id),
    agent_id    text REFERENCES field_agents (agent_id),
    target      text NOT NULL,           -- the URL, sealed
    shown       text NOT NULL,           -- the URL as pages show it: host and path, no key
    secret      text,                    -- 钉钉's 加签 secret or the webhook's HMAC key, sealed
    per_minute  integer NOT NULL DEFAULT 20 CHECK (per_minute > 0),
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    CHECK (store_id IS NULL OR agent_id IS NULL)
);

-- The outbox: one row per message and channel, queued in the transaction that made the news (a
-- task opened or reassigned), sent by the notifier with retries. (channel, dedup_key) is unique,
-- so the same news never queues twice.
CREATE TABLE notify_outbox (
    notice_id       bigserial PRIMARY KEY,
    channel_id      bigint NOT NULL REFERENCES notify_channels (channel_id) ON DELETE CASCADE,
    dedup_key       text NOT NULL,       -- task:12:opened, task:12:assigned:A2, test:...
    task_id         bigint,
    notice          jsonb NOT NULL,      -- what the message says, fixed when it was queued
    created_at      timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    sent_at         timestamptz,
    gave_up_at      timestamptz,
    last_error      text,
    UNIQUE (channel_id, dedup_key)
);
CREATE INDEX notify_outbox_due ON notify_outbox (next_attempt_at) WHERE sent_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX notify_outbox_sent ON notify_outbox (channel_id, sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX notify_outbox_task ON notify_outbox (task_id);
