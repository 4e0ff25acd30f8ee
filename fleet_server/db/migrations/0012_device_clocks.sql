-- Device clocks (issue 24): what each device's clock is doing, as the fleet last saw it.
--   board_offset_ms  the device's own correction (trusted time = board clock + offset; a board
--                    5 min fast reports -300000), its source and possible error
--   skew_ms          the device's (corrected) report time minus when the server received it,
--                    the largest in the last batch: near 0 when the correction holds; a report
--                    kept in the outbox only makes it more negative, never positive
--   refused_*        the last connect the broker refused because the password's time was off
--                    (only a password the device's own secret signed counts)
CREATE TABLE device_clocks (
    device_id        text PRIMARY KEY,
    board_offset_ms  bigint,
    source           text,
    error_ms         integer,
    skew_ms          bigint,
    reported_at      timestamptz,
    refused_skew_s   integer,
    refused_at       timestamptz
);
