-- What counts (issue 25, fleet_server/devices/parts.py): a fault event of a part that stops
-- announcements (speaker, TTS chip, modem, power) fails the device and is counted in
-- fault_events; trouble with a part that leaves it announcing (printer, battery, storage, the
-- network registration) is counted here instead, with the parts named, for the maintenance
-- detector. Rows written before this migration counted every fault event in fault_events.
ALTER TABLE device_daily
    ADD COLUMN degraded_events bigint NOT NULL DEFAULT 0,
    ADD COLUMN degraded_parts text[] NOT NULL DEFAULT '{}';
