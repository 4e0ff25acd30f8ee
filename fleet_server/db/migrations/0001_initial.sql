-- Device registry, telemetry, bindings, payments and deliveries: the walking skeleton's schema.
-- Times are timestamptz; money is bigint fen.

CREATE TABLE devices (
    device_id        text PRIMARY KEY,
    serial           text,
    model            text,
    firmware         text,
    boot_id          text,
    first_seen       timestamptz NOT NULL DEFAULT now(),
    last_seen        timestamptz,
    online           boolean NOT NULL DEFAULT false,
    presence_reason  text,
    presence_at      timestamptz,
    hello_at         timestamptz
);

CREATE TABLE device_health (
    device_id    text NOT NULL,
    ts           timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    uptime_s     bigint,
    rssi_dbm     smallint,
    volume       smallint,
    queue_depth  integer,
    played_total bigint,
    mem_rss_kb   integer,
    payload      jsonb NOT NULL
);
CREATE INDEX device_health_device_ts ON device_health (device_id, ts DESC);

CREATE TABLE device_events (
    device_id    text NOT NULL,
    ts           timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    kind         text NOT NULL,
    detail       jsonb NOT NULL
);
CREATE INDEX device_events_device_ts ON device_events (device_id, ts DESC);

-- One merchant per device: the device id is the key.
CREATE TABLE bindings (
    device_id    text PRIMARY KEY,
    merchant_id  text NOT NULL,
    bound_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bindings_merchant ON bindings (merchant_id);

CREATE TABLE payments (
    payment_id   text PRIMARY KEY,
    source       text NOT NULL,
    notify_id    text NOT NULL,
    merchant_id  text NOT NULL,
    amount_fen   bigint NOT NULL CHECK (amount_fen >= 0),
    channel      text NOT NULL,
    kind         text NOT NULL,
    status       text NOT NULL,
    paid_at      timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    raw          jsonb NOT NULL
);
CREATE INDEX payments_received_at ON payments (received_at);

-- One row per (payment, device) that should announce it.
CREATE TABLE deliveries (
    payment_id        text NOT NULL REFERENCES payments (payment_id),
    device_id         text NOT NULL,
    status            text NOT NULL DEFAULT 'pending',
    attempts          integer NOT NULL DEFAULT 0,
    expires_at        timestamptz NOT NULL,
    last_published_at timestamptz NOT NULL,
    acked_at          timestamptz,
    play_started_at   timestamptz,
    acks              integer NOT NULL DEFAULT 0,
    text              text,
    reason            text,
    PRIMARY KEY (payment_id, device_id)
);
CREATE INDEX deliveries_pending ON deliveries (last_published_at) WHERE status = 'pending';

CREATE TABLE rejected_notifications (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    source       text NOT NULL,
    code         text NOT NULL,
    reason       text NOT NULL,
    body         text NOT NULL,
    headers      jsonb NOT NULL
);
