"""Device inspection (设备巡检) and field agents' tasks: the detectors (`detectors`, pure), the
inspector's round (`inspector`), the tasks a finding opens and the system verifies (`tasks`), their
SQL (`queries`) and the HTTP routes (`routes`)."""
