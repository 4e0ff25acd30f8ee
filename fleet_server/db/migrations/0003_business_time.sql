-- business_seconds() of 0002 took a timestamptz and read its epoch with date_part(), which is
-- STABLE: PostgreSQL does not inline an IMMUTABLE SQL function whose body is less immutable,
-- so every call went through the function executor (11 us a call; 3 s of a 10,000-device
-- summary). This one takes the epoch seconds, does float arithmetic only, and is inlined.
DROP FUNCTION business_seconds(timestamptz, double precision, double precision, double precision);

-- Seconds of business hours from the local epoch (1970-01-01 00:00 local) to the instant
-- `epoch_s` (UTC epoch seconds), for a merchant `off_s` seconds east of UTC opening at `open_s`
-- and closing at `close_s` seconds after local midnight (close <= open: open past midnight).
-- The business time inside [a, b) is business_seconds(b) - business_seconds(a): constant time
-- per interval, however many days it spans.
CREATE FUNCTION business_seconds(epoch_s double precision, off_s double precision, open_s double precision,
                                 close_s double precision) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN close_s > open_s
        THEN floor((epoch_s + off_s) / 86400) * (close_s - open_s)
             + LEAST(GREATEST((epoch_s + off_s) - floor((epoch_s + off_s) / 86400) * 86400 - open_s, 0),
                     close_s - open_s)
        ELSE floor((epoch_s + off_s) / 86400) * (close_s + 86400 - open_s)
             + LEAST((epoch_s + off_s) - floor((epoch_s + off_s) / 86400) * 86400, close_s)
             + GREATEST((epoch_s + off_s) - floor((epoch_s + off_s) / 86400) * 86400 - open_s, 0)
    END
$$;
