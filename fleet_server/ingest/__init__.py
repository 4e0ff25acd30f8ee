"""Device messages into the database: the MQTT consumer (`consumer`), one batch turned into rows
and written in one transaction (`batch`, `queries`), and where telemetry lives, partitioned or on
TimescaleDB (`telemetry`)."""
