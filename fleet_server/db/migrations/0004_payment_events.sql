-- Payments the merchant did not hear, told back to the payment backend (so the merchant app can
-- show them): an outbox, written in the transaction that concludes "not announced", sent by the
-- bridge's webhook loop until the backend answers 2xx. One row per (payment, event).
CREATE TABLE payment_events (
    id              bigserial PRIMARY KEY,
    payment_id      text NOT NULL REFERENCES payments (payment_id),
    event           text NOT NULL,          -- not_announced
    reason          text NOT NULL,          -- no_bound_device | missed | expired | refused | failed
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text,
    UNIQUE (payment_id, event)
);
CREATE INDEX payment_events_due ON payment_events (next_attempt_at) WHERE delivered_at IS NULL;
