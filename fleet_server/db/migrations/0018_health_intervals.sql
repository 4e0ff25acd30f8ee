-- The health interval each device last said it keeps (Health.interval_s): the heartbeat check
-- expects its next report within 1.5 x this, or 1.5 x the fleet's default while it is NULL (a
-- device that has not said, an older agent).
ALTER TABLE devices ADD COLUMN health_interval_s double precision;
